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

# seconds a group's instance has, from its domain's start, to print its
# readiness line before the compute agent marks it failed (reason
# ReadyTimeout) and stops its domain. 900 s is what the agent waited before
# groups had the field; a tiny guest is ready in 4-15 s under TCG, 20 of
# them on 2 cores in ~70 s, so a group of slow real images may want more
READY_TIMEOUT = 900
# how a group's instances start (issue 13): boot (a cold boot, as always),
# clone (restored from a warm-clone template of the image and flavor, made on
# the node on first use; a boot when that fails, and the instance says why),
# auto (a clone where the node has a template or can make one). boot by
# default: a clone needs an image whose guest takes its identity after a
# restore (the demo guest does; design.md "Warm clones"), and a user image
# that does not would wait at its template for ready_timeout
START = "boot"
STARTS = ("auto", "clone", "boot")
READY_TIMEOUT_MIN = 10
READY_TIMEOUT_MAX = 86400


def placement() -> dict:
    """A group's placement when the spec gives none (a fresh dict each call)."""
    return {"strategy": STRATEGY, "max_per_node": MAX_PER_NODE}


def update_policy() -> dict:
    """A group's update policy when the spec gives none (a fresh dict each call)."""
    return {"max_unavailable": MAX_UNAVAILABLE, "max_surge": MAX_SURGE}
