"""Who leads each rack, read from the kazoo Election znodes.

kazoo's Election is a Lock whose contenders store their identifier (the node
name); the contender with the lowest sequence number leads. The service
(``GET /v1/nodes``) and the agents read leadership here, and only here.
"""
from __future__ import annotations

from typing import Iterable

from kazoo.exceptions import NoNodeError
from kazoo.recipe.election import Election

from cowfleet.models import NodeInfo
from cowfleet.zk import layout

ROLES = ("compute", "storage")


def rack_leader_name(zk, rack: str, role: str) -> str | None:
    """The node leading ``rack`` for ``role``: the first of kazoo's
    ``Election.contenders()`` (None when nobody contends)."""
    path = layout.rack_leader(rack, role)
    if not zk.exists(path):          # contenders() would create the folder: a reader writes nothing
        return None
    try:
        contenders = Election(zk, path).contenders()
    except NoNodeError:
        return None
    return contenders[0] if contenders and contenders[0] else None


def _first_contender(children: list[str]) -> str | None:
    """The child that leads: the lowest sequence number (the last 10 digits
    of a kazoo lock node's name), as ``Election.contenders()`` orders them."""
    return min(children, key=lambda c: c[-10:]) if children else None


def rack_leaders(zk, role: str, racks: Iterable[str] | None = None) -> dict[str, NodeInfo]:
    """rack -> the membership record of its current leader for ``role``
    (racks whose leader has no membership record are left out), of every
    rack or of ``racks`` only (a caller that knows which racks have nodes of
    that role: reading every rack's folder for the storage leaders was ~100
    reads, 99 of them of compute racks, for each compute agent's first
    locate; 1,000 fake agents made ~100,000 while a placement committed).

    Read by hand rather than with ``rack_leader_name`` per rack, because it
    runs on every placement request and image locate, for every rack: three
    waves of parallel reads whatever the number of racks, where kazoo's
    ``contenders()`` reads every contender of a rack one after another (and
    checks its folder first). Measured with bench/leaders.py (10 contenders
    a rack, medians of 20, a quiet machine): the recipe with the racks on 16
    threads took 51 / 170 / 526 ms for 5 / 20 / 100 racks, this read 6.7 /
    24 / 98 ms (5-8x less; the recipe rack after rack 61 / 205 / 914 ms;
    a loaded machine gave the same ratios) -- 20 racks is bench/placement.py's 200 agents, whose whole
    placement is to commit within 2 s. The order is kazoo's
    (``_first_contender``); a leader that just left is asked again through
    kazoo (``rack_leader_name``)."""
    if racks is None:
        try:
            racks = zk.get_children(layout.RACKS)
        except NoNodeError:
            return {}
    wave = [(r, zk.get_children_async(layout.rack_leader(r, role))) for r in sorted(racks)]
    firsts = []
    for rack, res in wave:
        try:
            first = _first_contender(res.get())
        except NoNodeError:
            continue
        if first:
            firsts.append((rack, zk.get_async(f"{layout.rack_leader(rack, role)}/{first}")))
    names = []
    for rack, res in firsts:
        try:
            data, _ = res.get()
        except NoNodeError:
            # it just left; the next contender leads
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
