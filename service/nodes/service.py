from __future__ import annotations

from cowfleet.models import NodeInfo
from cowfleet.zk import layout
from cowfleet.zk.connection import read_children


def leaders(zk) -> set[str]:
    """Node names currently leading their rack (kazoo Election contenders
    store the node name; the lowest sequence leads)."""
    out = set()
    for rack in zk.get_children(layout.RACKS):
        for role in ("compute", "storage"):
            path = layout.rack_leader(rack, role)
            try:
                contenders = zk.get_children(path)
            except Exception:
                continue
            if not contenders:
                continue
            first = sorted(contenders, key=lambda c: c[-10:])[0]
            try:
                data, _ = zk.get(f"{path}/{first}")
                out.add(data.decode())
            except Exception:
                pass
    return out


def list_(zk) -> list[dict]:
    lead = leaders(zk)
    out = []
    for node, _ in read_children(zk, layout.NODES, NodeInfo):
        d = node.to_dict()
        d["leader"] = node.name in lead
        out.append(d)
    return out
