"""Where each object lives in ZooKeeper: one small JSON znode per object.

Every path is built here so the service, the agents and the tests agree.
Isolation between clusters (and tests) comes from a chroot in the connection
string (``host:port/chroot``), so these paths never change.
"""
ROOT = "/cowfleet"

IMAGES = f"{ROOT}/images"
FLAVORS = f"{ROOT}/flavors"
GROUPS = f"{ROOT}/groups"
NODES = f"{ROOT}/nodes"
RACKS = f"{ROOT}/racks"
REQUESTS = f"{ROOT}/requests"
LOCKS = f"{ROOT}/locks"
ASSIGNMENTS = f"{ROOT}/assignments"
CONFIG = f"{ROOT}/config"
TOKENS = f"{CONFIG}/tokens"
NETWORK_CONFIG = f"{CONFIG}/network"
SUBNETS = f"{ROOT}/subnets"              # one claim per subnet, named by the subnet
SUBNET_CLAIMS = f"{ROOT}/subnet-claims"  # the same claim indexed by node (one read at start)
# a group's recent events, beside the group rather than under it: the
# service's list mirror caches the whole /groups tree in every worker
EVENTS = f"{ROOT}/events"

TOP_LEVEL = (IMAGES, FLAVORS, GROUPS, NODES, RACKS, REQUESTS, LOCKS, ASSIGNMENTS, TOKENS, SUBNETS, SUBNET_CLAIMS,
             EVENTS)


GROUP_LOCK_PREFIX = "group-"


def group_lock(name: str) -> str:
    """Held by the leader coordinating the group (kazoo Lock)."""
    return f"{LOCKS}/{GROUP_LOCK_PREFIX}{name}"


def parse_group_lock(child: str) -> str | None:
    """The group a child of ``LOCKS`` is the lock of (None: not a group's lock)."""
    return child[len(GROUP_LOCK_PREFIX):] if child.startswith(GROUP_LOCK_PREFIX) else None


def image(name: str) -> str:
    return f"{IMAGES}/{name}"


def image_replicas(name: str) -> str:
    return f"{IMAGES}/{name}/replicas"


def image_replica(name: str, node: str) -> str:
    return f"{IMAGES}/{name}/replicas/{node}"


def flavor(name: str) -> str:
    return f"{FLAVORS}/{name}"


def group(name: str) -> str:
    return f"{GROUPS}/{name}"


def group_instances(name: str) -> str:
    return f"{GROUPS}/{name}/instances"


def group_instance(name: str, instance_id: str) -> str:
    return f"{GROUPS}/{name}/instances/{instance_id}"


def group_status(name: str) -> str:
    """Written by the coordinating leader (observed generation, placement
    message) so that the group znode's version stays the user's ETag."""
    return f"{GROUPS}/{name}/status"


def token(digest: str) -> str:
    """An API token, named by the SHA-256 (hex) of the token."""
    return f"{TOKENS}/{digest}"


def group_placement(name: str) -> str:
    """The trace of the group's last placement hand-shake."""
    return f"{GROUPS}/{name}/placement"


def group_events(name: str) -> str:
    """A group's events: sequential children ``ev-NNNNNNNNNN`` (cowfleet/zk/events.py)."""
    return f"{EVENTS}/{name}"


EVENT_PREFIX = "ev-"


def group_event(name: str, seq: str) -> str:
    return f"{EVENTS}/{name}/{EVENT_PREFIX}{seq}"


def node(name: str) -> str:
    return f"{NODES}/{name}"


def rack_leader(rack: str, role: str) -> str:
    return f"{RACKS}/{rack}/{role}-leader"


def request(seq_name: str) -> str:
    return f"{REQUESTS}/{seq_name}"


REQUEST_PREFIX = f"{REQUESTS}/req-"


def assignments(node_name: str) -> str:
    """Persistent folder of one node's assignments (its node znode is
    ephemeral, so it cannot hold children). A child exists exactly while the
    instance should run on that node."""
    return f"{ASSIGNMENTS}/{node_name}"


def assignment(node_name: str, group_name: str, instance_id: str) -> str:
    return f"{ASSIGNMENTS}/{node_name}/{group_name}:{instance_id}"


def parse_assignment(child: str) -> tuple[str, str]:
    group_name, _, instance_id = child.partition(":")
    return group_name, instance_id


def subnet(cidr: str) -> str:
    """A claimed instance subnet, e.g. ``10.78.3.0/24`` -> ``.../subnets/10.78.3.0-24``."""
    return f"{SUBNETS}/{cidr.replace('/', '-')}"


def subnet_claim(node_name: str) -> str:
    return f"{SUBNET_CLAIMS}/{node_name}"


def users_guard(obj_path: str) -> str:
    """The guard of an image or flavor against deletion while a group names
    it (cowfleet/zk/groups.py): every group write bumps it."""
    return f"{obj_path}/users"
