from __future__ import annotations

from cowfleet.models import NodeInfo
from cowfleet.service.api import Result
from cowfleet.protocol import ProblemType
from cowfleet.service.problems import conflict, not_found
from cowfleet.service.paging import ListQuery, page
from cowfleet.zk import layout, subnets


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


def node_labels(node: NodeInfo) -> dict[str, str]:
    """Nodes carry no labels of their own: ``label=`` selects on role and rack."""
    return {"role": node.role, "rack": node.rack}


def list_(zk, q: ListQuery) -> Result:
    lead = leaders(zk)

    def view(zk, node: NodeInfo, _version: int) -> dict:
        return dict(node.to_dict(), leader=node.name in lead)
    return page(zk, layout.NODES, layout.node, NodeInfo, view, q, labels_of=node_labels)


def remove(zk, name: str) -> None:
    """An operator removes a node for good: its subnet claim (kept across
    agent restarts and session blips) goes back to the pool."""
    if zk.exists(layout.node(name)):
        raise conflict(ProblemType.NODE_IN_CLUSTER, f"node '{name}' is in the cluster: stop its agent first (its instances are then "
                       "placed elsewhere)")
    if subnets.release(zk, name) is None:
        raise not_found("node", name)
