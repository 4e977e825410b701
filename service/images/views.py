from flask import Blueprint, request

from cowfleet.service.api import Result, check_name, endpoint, if_match, zk
from cowfleet.service.fields import list_args
from cowfleet.service.images import service
from cowfleet.service.images.schemas import ImageSchema, ImageSpecSchema

bp = Blueprint("images", __name__, url_prefix="/v1/images")


@bp.get("")
@endpoint(out=ImageSchema, many=True)
def list_images():
    limit, after = list_args(request.args)      # validate before touching ZooKeeper
    return service.list_(zk(), limit, after)


@bp.get("/<name>")
@endpoint(out=ImageSchema)
def get_image(name):
    return service.get(zk(), name)


@bp.put("/<name>")
@endpoint(body=ImageSpecSchema, out=ImageSchema)
def put_image(name, data):
    check_name(name)
    image, created = service.put(zk(), name, data, if_match())
    return Result(image, 201 if created else 200)


@bp.delete("/<name>")
@endpoint()
def delete_image(name):
    service.delete(zk(), name, if_match())
    return Result(None, 204)
