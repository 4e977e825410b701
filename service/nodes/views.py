from flask import Blueprint, request

from cowfleet.service.api import Result, endpoint, existing_name, zk
from cowfleet.service.nodes import service
from cowfleet.service.nodes.schemas import NodeSchema
from cowfleet.service.paging import list_query

bp = Blueprint("nodes", __name__, url_prefix="/v1/nodes")


@bp.get("")
@endpoint(out=NodeSchema, many=True)
def list_nodes():
    """List the agents' nodes (paginated; label=role=... or rack=... filters)."""
    q = list_query(request.args)      # validated before ZooKeeper is touched
    return service.list_(zk(), q)


@bp.delete("/<name>")
@endpoint(codes=(204,))
def remove_node(name):
    """Remove a departed node: release its instance subnet (409 while its agent is in the cluster)."""
    service.remove(zk(), existing_name(name, "node"))
    return Result(None, 204)
