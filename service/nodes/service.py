from __future__ import annotations

from cowfleet.models import NodeInfo
from cowfleet.protocol import ProblemType
from cowfleet.service.api import Result
from cowfleet.service.paging import ListQuery, page
from cowfleet.service.problems import conflict, not_found
from cowfleet.zk import layout, subnets
from cowfleet.zk.leaders import leader_names


def node_labels(node: NodeInfo) -> dict[str, str]:
    """Nodes carry no labels of their own: ``label=`` selects on role and rack."""
    return {"role": node.role, "rack": node.rack}


def list_(zk, q: ListQuery) -> Result:
    lead = leader_names(zk)

    def view(zk, node: NodeInfo, _version: int) -> dict:
        return dict(node.to_dict(), leader=node.name in lead)
    return page(zk, layout.NODES, layout.node, NodeInfo, view, q, labels_of=node_labels)


def remove(zk, name: str) -> None:
    """An operator removes a node for good: its subnet claim (kept across
    agent restarts and session blips) goes back to the pool."""
    if zk.exists(layout.node(name)):
        raise conflict(ProblemType.NODE_IN_CLUSTER, f"node '{name}' is in the cluster: stop its agent first "
                       "(its instances are then placed elsewhere)")
    if subnets.release(zk, name) is None:
        raise not_found("node", name)
