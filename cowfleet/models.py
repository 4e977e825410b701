"""The records kept in ZooKeeper, one small JSON znode each.

Each record is a dataclass with its valid states; ``to_bytes``/``from_bytes``
are the only (de)serialisation. The znode version travels alongside as the
record's ETag and is never stored inside the data.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cowfleet import defaults


def now() -> float:
    return round(time.time(), 3)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    ms = int(round(ts * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


class Record:
    """Mixin: JSON bytes <-> dataclass, ignoring keys a newer writer added."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_bytes(self) -> bytes:
        # the fields as they are, not asdict's deep copy: a record holds JSON
        # values only (json.dumps refuses anything else), and the copy cost
        # 0.5 ms an instance -- 5 s of a 10,000-instance placement
        return json.dumps({k: getattr(self, k) for k in _field_names(type(self))},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes):
        raw = json.loads(data.decode() or "{}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class ImageStatus:
    PENDING = "pending"
    REPLICATING = "replicating"
    AVAILABLE = "available"
    DEGRADED = "degraded"
    ERROR = "error"
    ALL = (PENDING, REPLICATING, AVAILABLE, DEGRADED, ERROR)


@dataclass
class Image(Record):
    name: str
    format: str = "raw"
    min_replicas: int = defaults.MIN_REPLICAS
    source_url: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    size_bytes: int | None = None
    sha256: str | None = None
    error: str | None = None
    created_at: float = field(default_factory=now)

    IMMUTABLE: ClassVar[tuple[str, ...]] = ("format", "source_url")


@dataclass
class Replica(Record):
    """One storage copy of an image, written by the storage agent holding it
    once the copy is verified and exported read-only over iSCSI."""
    node: str
    rack: str
    path: str
    sha256: str
    size_bytes: int
    created_at: float = field(default_factory=now)
    portal: str | None = None     # iSCSI portal HOST:PORT of the storage node's tgtd
    target: str | None = None     # the target's IQN (LUN 1 is the master, read-only)


@dataclass
class Flavor(Record):
    name: str
    vcpus: int
    memory_mib: int
    disk_gib: int


DEFAULT_FLAVORS = (
    Flavor("small", vcpus=1, memory_mib=128, disk_gib=1),
    Flavor("medium", vcpus=1, memory_mib=256, disk_gib=5),
    Flavor("large", vcpus=2, memory_mib=512, disk_gib=10),
)


class GroupPhase:
    PENDING = "pending"
    PROVISIONING = "provisioning"
    READY = "ready"
    DEGRADED = "degraded"
    DELETING = "deleting"
    ALL = (PENDING, PROVISIONING, READY, DEGRADED, DELETING)


@dataclass
class Group(Record):
    """The desired state of an instance group (the user's spec)."""
    name: str
    image: str
    flavor: str
    size: int
    placement: dict[str, Any] = field(default_factory=defaults.placement)
    user_data: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    update_policy: dict[str, Any] = field(default_factory=defaults.update_policy)
    persistent: bool = False      # overlays survive instance restarts (the exception to ephemeral)
    ssh_authorized_keys: list[str] = field(default_factory=list)
    ready_timeout: int = defaults.READY_TIMEOUT   # seconds from domain start to readiness, else failed
    start: str = defaults.START   # boot, clone or auto (defaults.STARTS): how its instances start
    generation: int = 1
    deleting: bool = False
    created_at: float = field(default_factory=now)
    updated_at: float | None = None   # when the spec last changed (generation + 1); None: never since creation

    SPEC_FIELDS: ClassVar[tuple[str, ...]] = (
        "image", "flavor", "size", "placement", "user_data", "labels", "update_policy", "persistent",
        "ssh_authorized_keys", "ready_timeout", "start")

    def spec(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.SPEC_FIELDS}

    def is_current(self, inst: "Instance") -> bool:
        """Does the instance run this spec's image and flavor (else a rolling
        update replaces it)?"""
        return inst.image == self.image and inst.flavor == self.flavor


@dataclass
class GroupStatus(Record):
    """Written by the coordinating leader, read by the service.

    ``reason`` says, as a ``Reason``, why instances are not placed (empty when
    all are), and ``since`` when that reason started holding (kept across the
    leader's re-checks while it holds): the group's ``Placed`` condition."""
    observed_generation: int = 0
    unplaced: int = 0
    message: str = ""
    reason: str = ""
    since: float | None = None


class Reason:
    """Why an instance or a group is where it is: the machine-readable
    ``reason`` of instances, of a group's conditions and of its events
    (CamelCase, as kubectl's). Clients may branch on these; messages are for
    people."""
    # placement (the leader)
    NO_COMPUTE_NODES = "NoComputeNodes"          # no compute node answered with an offer
    NO_CAPACITY = "InsufficientCapacity"         # the nodes have no room for the flavor
    MAX_PER_NODE = "MaxPerNodeReached"           # room, but placement.max_per_node forbids it
    FLAVOR_NOT_FOUND = "FlavorNotFound"
    NODE_LEFT = "NodeLeft"                       # instances re-placed off a node that left
    # an instance on its node (the compute agent)
    IMAGE_NO_DATA = "ImageNotAvailable"          # the image holds no data yet (or failed to get it)
    NO_REPLICA = "NoReplicaReachable"            # no copy of the image reachable from the node
    ATTACH_FAILED = "ImageAttachFailed"
    NETWORK_NOT_READY = "NetworkNotReady"
    ADDRESSES_EXHAUSTED = "AddressesExhausted"
    OVERLAY_FAILED = "OverlayFailed"
    DOMAIN_START_FAILED = "DomainStartFailed"
    READY_TIMEOUT = "ReadyTimeout"               # no readiness line within the group's ready_timeout
    GUEST_PANIC = "GuestKernelPanic"             # the guest's kernel panicked before its readiness line
    # what a group's conditions say of the group as a whole (the service)
    ALL_PLACED = "AllPlaced"
    NOT_OBSERVED = "PlacementPending"            # no leader has acted on this generation yet
    IMAGE_AVAILABLE = "ImageAvailable"
    IMAGE_PENDING = "ImagePending"
    IMAGE_ERROR = "ImageError"
    IMAGE_NOT_FOUND = "ImageNotFound"
    READY = "AllReady"
    INSTANCES_FAILED = "InstancesFailed"
    INSTANCES_PENDING = "InstancesPending"
    GUESTS_BOOTING = "GuestsBooting"             # domains run, guests not ready yet
    ROLLING_UPDATE = "RollingUpdate"
    SCALING = "Scaling"
    DELETING = "Deleting"
    COMPLETE = "Complete"
    STALLED = "Stalled"


class ConditionType:
    """The conditions on a group's status (service/groups/conditions.py)."""
    IMAGE_AVAILABLE = "ImageAvailable"   # the image holds data on at least one storage node
    PLACED = "Placed"                    # every wanted instance has a node
    READY = "Ready"                      # ready == size, on the current spec
    PROGRESSING = "Progressing"          # the group is moving toward its spec (False: complete or stalled)
    ALL = (IMAGE_AVAILABLE, PLACED, READY, PROGRESSING)


class InstanceState:
    PENDING = "pending"          # assigned, agent has not started it yet
    STARTING = "starting"        # overlay made, domain being created
    RUNNING = "running"          # domain running, guest not yet ready
    READY = "ready"              # guest announced readiness
    FAILED = "failed"
    TERMINATING = "terminating"  # desired: gone; the agent removes the znode when done
    ALL = (PENDING, STARTING, RUNNING, READY, FAILED, TERMINATING)
    LIVE = (PENDING, STARTING, RUNNING, READY)


@dataclass
class Instance(Record):
    id: str
    group: str
    node: str
    rack: str
    image: str
    flavor: str
    generation: int
    state: str = InstanceState.PENDING
    address: str | None = None   # on the node's instance subnet, fixed before the domain starts
    mac: str | None = None       # locally administered: network.mac_for(id), or its warm spare's (spares.py)
    message: str = ""
    created_at: float = field(default_factory=now)
    running_at: float | None = None
    ready_at: float | None = None
    reason: str = ""             # a Reason when pending or failed for a known cause ("" otherwise)
    state_since: float | None = None   # when ``state`` (or, pending, ``reason``) last changed
    start: str | None = None     # how its domain last started: clone or boot (None: not yet)
    start_reason: str = ""       # why a clone was asked for and it booted (e.g. the template failed)


class EventType:
    NORMAL = "Normal"
    WARNING = "Warning"
    ALL = (NORMAL, WARNING)


class EventReason:
    """What happened to a group (an event's ``reason``)."""
    CREATED = "Created"            # the service: the group was made
    UPDATED = "Updated"            # the service: its spec changed (generation + 1)
    SCALED = "Scaled"              # the service: only its size changed
    DELETING = "Deleting"          # the service: deletion asked
    PLACED = "Placed"              # the leader: instances assigned to nodes
    UNPLACED = "Unplaced"          # the leader: instances it could not place, and why
    MOVED = "Moved"                # the leader: instances re-placed off a node that left
    REPLACED = "Replaced"          # the leader: outdated instances retired by a rolling update
    SCALED_IN = "ScaledIn"         # the leader: instances removed beyond size
    TERMINATING = "Terminating"    # the leader: instances removed as the group is deleted
    WAITING = "Waiting"            # the compute agent: an instance waits (its reason in the message)
    STARTED = "Started"            # the compute agent: its domain runs
    READY = "Ready"                # the compute agent: its guest said it is ready
    FAILED = "Failed"              # the compute agent: it failed (its reason in the message)


@dataclass
class Event(Record):
    """One thing that happened to a group, kept in a capped list
    (cowfleet/zk/events.py); the id is the znode's sequence number."""
    reason: str
    message: str
    type: str = EventType.NORMAL
    instance: str | None = None
    node: str | None = None
    generation: int | None = None
    source: str = ""             # service | the leader's or the agent's node name
    time: float = field(default_factory=now)


# the most of an instance's serial console one read returns (the compute
# agent's P2P read and GET .../console alike)
CONSOLE_TAIL_MAX = 1 << 20


def valid_instance_id(text: str) -> bool:
    """An instance id as placement makes them (``<group>-<hex>``): letters,
    digits and '-' only, so it never names a path of its own."""
    return 0 < len(text) <= 128 and text.isascii() and all(ch.isalnum() or ch == "-" for ch in text)


@dataclass
class NodeInfo(Record):
    """An agent's ephemeral membership record."""
    name: str
    role: str                    # compute | storage
    rack: str
    address: str | None = None   # the agent's P2P HTTP endpoint
    capacity: dict[str, int] = field(default_factory=dict)
    allocated: dict[str, int] = field(default_factory=dict)
    healthy: bool = True
    last_seen: float = field(default_factory=now)
    virt_type: str | None = None
    subnet: str | None = None    # compute: the instance subnet it claimed (peers route it via this node)
    node_ip: str | None = None   # the node's own address, the next hop for its instance subnet
    warm_spares: int | None = None   # compute: warm-clone spares restored and waiting (agents/compute/spares.py)


@dataclass
class NetworkConfig(Record):
    """The cluster's instance network (one znode, written by the operator):
    every compute node claims one subnet of ``instance_cidr`` of length
    ``subnet_prefix`` and allocates its instances' addresses from it."""
    instance_cidr: str
    subnet_prefix: int = 24


@dataclass
class SubnetClaim(Record):
    """One compute node's claim on a subnet of the instance CIDR. Persistent
    (not ephemeral): it outlives agent restarts and session blips, and goes
    only when an operator removes the node."""
    node: str
    subnet: str
    created_at: float = field(default_factory=now)


@dataclass
class ApiToken(Record):
    """A bearer token kept in ZooKeeper. The znode is named by the SHA-256 of
    the token: the token itself is never stored, only shown once at creation."""
    name: str
    role: str                    # admin | reader
    created_at: float = field(default_factory=now)
    expires_at: float | None = None   # refused from then on (None: never expires)
    last_used: float | None = None    # written at most once a minute (service/auth.py)

    def expired(self, at: float | None = None) -> bool:
        return self.expires_at is not None and (now() if at is None else at) >= self.expires_at


@dataclass
class DeployRequest(Record):
    """A hand-off from the service to the agents, queued in ZooKeeper."""
    group: str
    generation: int
    created_at: float = field(default_factory=now)
