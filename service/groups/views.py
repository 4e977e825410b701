from flask import Blueprint, request

from cowfleet.service.api import Result, check_name, endpoint, if_match, zk
from cowfleet.service.fields import list_args
from cowfleet.service.groups import service
from cowfleet.service.groups.schemas import GroupSchema, GroupSpecSchema

bp = Blueprint("groups", __name__, url_prefix="/v1/instance-groups")


@bp.get("")
@endpoint(out=GroupSchema, many=True)
def list_groups():
    limit, after = list_args(request.args)      # validate before touching ZooKeeper
    return service.list_(zk(), limit, after)


@bp.get("/<name>")
@endpoint(out=GroupSchema)
def get_group(name):
    return service.get(zk(), name)


@bp.put("/<name>")
@endpoint(body=GroupSpecSchema, out=GroupSchema)
def put_group(name, data):
    check_name(name)
    group, created = service.put(zk(), name, data, if_match())
    return Result(group, 201 if created else 200)


@bp.delete("/<name>")
@endpoint()
def delete_group(name):
    service.delete(zk(), name, if_match())
    return Result(None, 202)
