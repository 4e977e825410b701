"""What crosses a process boundary between cowfleet's components (bottom layer).

One definition each, imported by both sides: the data of an assignment znode
(written by the coordinating leader, read by the compute agent and by every
offer), a node's offer in the placement hand-shake (agent -> rack leader ->
coordinator, over P2P), the placement trace (written by the coordinator,
served by ``GET /v1/instance-groups/NAME/placement``), the locate answer
(storage leader -> compute agent), the agents' P2P paths, and the problem
types of the REST API's errors.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from cowfleet.models import Flavor

# -- assignments: /cowfleet/assignments/<node>/<group>:<id> (zk/layout.py) ------

DESIRED_RUN = "run"
DESIRED_TERMINATE = "terminate"


@dataclass
class Assignment:
    """The data of an assignment znode: what the node should do with the
    instance, and what it costs (counted by every offer the node makes)."""
    desired: str = ""            # DESIRED_RUN | DESIRED_TERMINATE ("" when unreadable: not run)
    vcpus: int = 0
    memory_mib: int = 0

    @property
    def runs(self) -> bool:
        return self.desired == DESIRED_RUN

    def to_bytes(self) -> bytes:
        return json.dumps({"desired": self.desired, "vcpus": self.vcpus, "memory_mib": self.memory_mib}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Assignment":
        raw = parse_assignment_data(data)
        return cls(desired=str(raw.get("desired", "")), vcpus=int(raw.get("vcpus", 0)),
                   memory_mib=int(raw.get("memory_mib", 0)))


def assignment_data(desired: str, flavor: Flavor) -> bytes:
    return Assignment(desired, flavor.vcpus, flavor.memory_mib).to_bytes()


def parse_assignment_data(data: bytes) -> dict:
    """The raw JSON object ({} when it is not one)."""
    try:
        raw = json.loads(data.decode() or "{}")
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}


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
    stale_nodes: list = field(default_factory=list)   # whose folder guard failed the last attempt: they read anew
    read_ms: float = 0.0       # the group, its instances, the members (the last attempt)
    offers_ms: float = 0.0
    leaders_ms: float = 0.0    # of offers_ms: finding the rack leaders (~0 when kept from an earlier round)
    plan_ms: float = 0.0       # decide, split, plan and cut into transactions
    commit_ms: float = 0.0
    total_ms: float = 0.0
    outcome: str = ""
    chunks: list = field(default_factory=list)    # one per transaction: {ops, bytes, instances, ms}

    def to_dict(self) -> dict:
        return asdict(self)


# -- locating an image (seed 001, steps 6-8) -------------------------------------

# what a located copy says: enough to attach it over iSCSI
REPLICA_FIELDS = ("node", "rack", "portal", "target", "sha256", "size_bytes")


def replica_location(replica: dict) -> dict:
    """A copy as a locate answer lists it (``REPLICA_FIELDS`` of a replica
    record's or a holder's dict)."""
    return {k: replica.get(k) for k in REPLICA_FIELDS}


@dataclass
class LocateAnswer:
    """Where an image's copies are: a storage rack leader's answer to
    ``POST /v1/locate`` (or, when no leader answers, the compute agent's own
    reading of the replica records), nearest first."""
    image: str
    format: str
    sha256: str | None
    min_replicas: int
    replicas: list[dict] = field(default_factory=list)   # replica_location() each
    answered_by: str = ""                                 # a storage leader, or "zookeeper"
    racks: dict = field(default_factory=dict)             # rack -> {leader, ms, error?}: the fan-out's trace

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LocateAnswer":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# -- P2P paths -------------------------------------------------------------------

class P2P:
    """The agents' P2P endpoints (POST, JSON), for the side that serves them
    and the sides that call them."""
    OFFER = "/v1/offer"                # compute agent: how many of a flavor it can take now
    RACK_OFFERS = "/v1/rack-offers"    # compute rack leader: its rack's offers
    RELEASE = "/v1/release"            # compute agent or leader: drop a request's reservations
    DEPLOY = "/v1/deploy"              # compute rack leader: coordinate a request (the service's hand-off)
    CONSOLE = "/v1/console"            # compute agent: the tail of an instance's serial console
    LOCATE = "/v1/locate"              # storage rack leader: where an image's copies are
    RACK_LOCATE = "/v1/rack-locate"    # storage rack leader: its rack's copies
    HOLDS = "/v1/holds"                # storage agent: the copies it holds
    NODE = "/v1/node"                  # any agent: its membership record


# an image's bytes on a storage agent: PUT (an upload streamed by the service),
# GET (a peer copying it); the agent routes it with the API's name rule
# (agents/storage/data_server.py, cowfleet.names)
def image_data_path(name: str) -> str:
    return f"/v1/images/{name}/data"


# -- problem types (RFC 9457) ----------------------------------------------------

class ProblemType:
    """The ``type`` of every problem+json the API answers: clients (the CLI,
    the Terraform provider, scripts) branch on these, never on a title or a
    detail, which are for people and may be reworded. ``about:blank`` only
    for errors with no more meaning than their HTTP status (an unknown route,
    a method not allowed, an internal error). Documented in README.md and in
    the OpenAPI document's Problem schema."""
    BLANK = "about:blank"
    PREFIX = "urn:cowfleet:problem:"
    MALFORMED_BODY = PREFIX + "malformed-body"                  # 400: empty, not JSON, nested too deeply
    MALFORMED_REQUEST = PREFIX + "malformed-request"            # 400: the HTTP itself (request line, header, chunk)
    UNAUTHORIZED = PREFIX + "unauthorized"                      # 401: no or unknown bearer token
    FORBIDDEN = PREFIX + "forbidden"                            # 403: the token's role may not do this
    NOT_FOUND = PREFIX + "not-found"                            # 404: no such object
    NOT_PLACED_YET = PREFIX + "not-placed-yet"                  # 404: a group's placement trace
    IMAGE_IN_USE = PREFIX + "image-in-use"                      # 409: delete while a group uses it
    FLAVOR_IN_USE = PREFIX + "flavor-in-use"                    # 409: delete or change while used
    FLAVOR_BUILT_IN = PREFIX + "flavor-built-in"                # 409: small, medium, large stay
    IMMUTABLE_FIELD = PREFIX + "immutable-field"                # 409: an image's format or source_url
    IMAGE_DATA_IMMUTABLE = PREFIX + "image-data-immutable"      # 409: other bytes for an image with data
    IMAGE_HAS_SOURCE = PREFIX + "image-has-source"              # 409: upload to an image fetched from a URL
    GROUP_BEING_DELETED = PREFIX + "group-being-deleted"        # 409: write to a group being deleted
    NODE_IN_CLUSTER = PREFIX + "node-in-cluster"                # 409: remove a node whose agent runs
    NETWORK_IN_USE = PREFIX + "network-in-use"                  # 409: change a network nodes hold subnets of
    TOKEN_EXISTS = PREFIX + "token-exists"                      # 409: create a token under a taken name
    PRECONDITION_FAILED = PREFIX + "precondition-failed"        # 412: If-Match / If-None-Match
    BODY_TOO_LARGE = PREFIX + "body-too-large"                  # 413
    IMAGE_TOO_LARGE = PREFIX + "image-too-large"                # 413: no storage node has room for the upload
    REQUEST_LINE_TOO_LONG = PREFIX + "request-line-too-long"    # 414: method + URL + version over the limit
    UNSUPPORTED_MEDIA_TYPE = PREFIX + "unsupported-media-type"  # 415
    INVALID = PREFIX + "invalid"                                # 422: field errors in ``errors``
    CHECKSUM_MISMATCH = PREFIX + "checksum-mismatch"            # 422: uploaded bytes vs X-Checksum-Sha256
    FORMAT_MISMATCH = PREFIX + "format-mismatch"                # 422: uploaded bytes vs the image's format
    TOO_MANY_UPLOADS = PREFIX + "too-many-uploads"              # 429: this worker's upload slots are taken
    HEADERS_TOO_LARGE = PREFIX + "headers-too-large"            # 431: too many header fields, or one too long
    NODE_FAILED = PREFIX + "node-failed"                        # 502: a node the request needs is gone or failed
    UNAVAILABLE = PREFIX + "unavailable"                        # 503: retry (Retry-After)
