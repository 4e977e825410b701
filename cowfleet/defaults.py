"""Defaults of a spec that more than one component fills in (bottom layer):
the API's schemas, the records in ZooKeeper, the placement policy and the
Terraform provider's plans all read them here, so they cannot drift apart."""
from __future__ import annotations

MIN_REPLICAS = 2                 # storage copies of an image (ARCHITECTURE.md step 8)

STRATEGIES = ("spread", "pack")
STRATEGY = "spread"
MAX_PER_NODE = None              # no cap
MAX_UNAVAILABLE = 1
MAX_SURGE = 1


def placement() -> dict:
    """A group's placement when the spec gives none (a fresh dict each call)."""
    return {"strategy": STRATEGY, "max_per_node": MAX_PER_NODE}


def update_policy() -> dict:
    """A group's update policy when the spec gives none (a fresh dict each call)."""
    return {"max_unavailable": MAX_UNAVAILABLE, "max_surge": MAX_SURGE}
