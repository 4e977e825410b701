"""Membership: the agents' ephemeral records under /cowfleet/nodes, and which
of them take work of a role. The service, the placement hand-shake and the
image upload pick nodes with this one rule."""
from __future__ import annotations

from cowfleet.models import NodeInfo
from cowfleet.zk import layout
from cowfleet.zk.connection import read_children


def serving(node: NodeInfo, role: str, rack: str | None = None) -> bool:
    """Does ``node`` take work of ``role`` (in ``rack``, when given)? A member
    of that role that reports itself healthy."""
    return node.role == role and node.healthy and (rack is None or node.rack == rack)


def members(zk, role: str, rack: str | None = None) -> list[NodeInfo]:
    """The members serving ``role`` (in ``rack``), read from ZooKeeper (or
    the service's mirror of it)."""
    return [n for n, _ in read_children(zk, layout.NODES, NodeInfo) if serving(n, role, rack)]
