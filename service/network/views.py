from flask import Blueprint

from cowfleet.service.api import Result, endpoint, if_match, zk
from cowfleet.service.network import service
from cowfleet.service.network.schemas import NetworkSchema, NetworkSpecSchema

bp = Blueprint("network", __name__, url_prefix="/v1/network")


@bp.get("")
@endpoint(out=NetworkSchema)
def get_network():
    """The instance network: its CIDR, subnet length, and each compute node's subnet."""
    return service.get(zk())


@bp.put("")
@endpoint(body=NetworkSpecSchema, out=NetworkSchema, codes=(200, 201))
def put_network(data):
    """Configure the instance network (before compute nodes claim subnets of it)."""
    obj, created = service.put(zk(), data, if_match())
    return Result(obj, 201 if created else 200)
