"""What crosses a process boundary between cowfleet's components (bottom layer).

One definition each, imported by both sides: the data of an assignment znode
(written by the coordinating leader, read by the compute agent and by every
offer), a node's offer in the placement hand-shake (agent -> rack leader ->
coordinator, over P2P), the placement trace (written by the coordinator,
served by ``GET /v1/instance-groups/NAME/placement``), and the P2P path of an
image's data (the service and peers -> a storage agent).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

from cowfleet.models import Flavor
from cowfleet.names import NAME_PATTERN

# -- assignments: /cowfleet/assignments/<node>/<group>:<id> (zk/layout.py) ------

DESIRED_RUN = "run"
DESIRED_TERMINATE = "terminate"


def assignment_data(desired: str, flavor: Flavor) -> bytes:
    return json.dumps({"desired": desired, "vcpus": flavor.vcpus,
                       "memory_mib": flavor.memory_mib}).encode()


def parse_assignment_data(data: bytes) -> dict:
    try:
        return json.loads(data.decode() or "{}")
    except ValueError:
        return {}


# -- the placement hand-shake ----------------------------------------------------

@dataclass
class NodeOffer:
    node: str
    rack: str
    count: int                 # instances of the flavor this node can take now
    version: int               # of its assignment folder when the offer was made
    of_group: int = 0          # instances of this group it already runs
    used_vcpus: int = 0
    used_memory_mib: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "NodeOffer":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Trace:
    """What an operator needs to see why instances went where."""
    request: str
    group: str
    coordinator: str
    want: int
    via: str = ""              # hand-off (from the service), queue (claimed), sweep (periodic)
    started_at: float = field(default_factory=time.time)
    racks: dict = field(default_factory=dict)     # rack -> {leader, ms, offers: {node: n}, error?}
    split: dict = field(default_factory=dict)     # node -> n
    per_rack: dict = field(default_factory=dict)  # rack -> n
    unplaced: int = 0
    attempts: int = 0
    offers_ms: float = 0.0
    commit_ms: float = 0.0
    total_ms: float = 0.0
    outcome: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# -- P2P paths -------------------------------------------------------------------

# an image's bytes on a storage agent: PUT (an upload streamed by the service),
# GET (a peer copying it); the name follows the API's rule (cowfleet.names)
IMAGE_DATA_PATH = re.compile(rf"^/v1/images/({NAME_PATTERN})/data\Z")


def image_data_path(name: str) -> str:
    return f"/v1/images/{name}/data"
