"""Who leads each rack, read from the kazoo Election znodes.

kazoo's Election is a Lock whose contenders store their identifier (the node
name); the contender with the lowest sequence number leads. The service, the
agents and ``GET /v1/nodes`` all read leadership the same way, here.
"""
from __future__ import annotations

from kazoo.exceptions import NoNodeError

from cowfleet.models import NodeInfo
from cowfleet.zk import layout

ROLES = ("compute", "storage")


def rack_leader_name(zk, rack: str, role: str) -> str | None:
    path = layout.rack_leader(rack, role)
    try:
        contenders = zk.get_children(path)
    except NoNodeError:
        return None
    for child in sorted(contenders, key=lambda c: c[-10:]):   # the sequence suffix
        try:
            data, _ = zk.get(f"{path}/{child}")
        except NoNodeError:
            continue                  # it just left: the next one leads
        return data.decode() or None
    return None


def rack_leaders(zk, role: str) -> dict[str, NodeInfo]:
    """rack -> the membership record of its current leader for ``role``
    (racks whose leader has no membership record are left out). Three waves
    of parallel reads, whatever the number of racks."""
    try:
        racks = sorted(zk.get_children(layout.RACKS))
    except NoNodeError:
        return {}
    wave = [(r, zk.get_children_async(layout.rack_leader(r, role))) for r in racks]
    firsts = []
    for rack, res in wave:
        try:
            contenders = res.get()
        except NoNodeError:
            continue
        if contenders:
            first = min(contenders, key=lambda c: c[-10:])       # the sequence suffix
            firsts.append((rack, zk.get_async(f"{layout.rack_leader(rack, role)}/{first}")))
    names = []
    for rack, res in firsts:
        try:
            data, _ = res.get()
        except NoNodeError:
            # it just left; the next contender leads: ask the slow way
            name = rack_leader_name(zk, rack, role)
            data = name.encode() if name else b""
        if data:
            names.append((rack, zk.get_async(layout.node(data.decode()))))
    out = {}
    for rack, res in names:
        try:
            data, _ = res.get()
        except NoNodeError:
            continue
        node = NodeInfo.from_bytes(data)
        if node.role == role and node.address:
            out[rack] = node
    return out


def leader_names(zk) -> set[str]:
    """Every node currently leading its rack, in any role."""
    out = set()
    try:
        racks = zk.get_children(layout.RACKS)
    except NoNodeError:
        return out
    for rack in racks:
        for role in ROLES:
            name = rack_leader_name(zk, rack, role)
            if name:
                out.add(name)
    return out
