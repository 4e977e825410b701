from flask import Blueprint

from cowfleet.service.api import endpoint, zk
from cowfleet.service.nodes import service
from cowfleet.service.nodes.schemas import NodeSchema

bp = Blueprint("nodes", __name__, url_prefix="/v1/nodes")


@bp.get("")
@endpoint(out=NodeSchema, many=True)
def list_nodes():
    return service.list_(zk())
