"""Who leads each rack, read from the kazoo Election znodes.

kazoo's Election is a Lock whose contenders store their identifier (the node
name); the contender with the lowest sequence number leads. The service, the
agents and ``GET /v1/nodes`` all read leadership the same way, here.
"""
from __future__ import annotations

from kazoo.exceptions import NoNodeError

from cowfleet.models import NodeInfo
from cowfleet.zk import layout
from cowfleet.zk.connection import read

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
    (racks whose leader has no membership record are left out)."""
    out = {}
    try:
        racks = zk.get_children(layout.RACKS)
    except NoNodeError:
        return out
    for rack in sorted(racks):
        name = rack_leader_name(zk, rack, role)
        if name is None:
            continue
        got = read(zk, layout.node(name), NodeInfo)
        if got is not None and got[0].role == role and got[0].address:
            out[rack] = got[0]
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
