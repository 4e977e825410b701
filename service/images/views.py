import sys

from flask import request

from cowfleet.service.api import endpoint, if_match, zk
from cowfleet.service.images import service
from cowfleet.service.images.schemas import ImageSchema
from cowfleet.specs import ImageSpecSchema
from cowfleet.service.problems import unsupported_media_type
from cowfleet.service.resource import crud_blueprint

bp = crud_blueprint("images", "/v1/images", service, ImageSpecSchema, ImageSchema, kind="image")

OCTET_STREAM = "application/octet-stream"


@bp.put("/<name>/data")
@endpoint(out=ImageSchema, raw_body=OCTET_STREAM, errors=(404, 502))
def put_data(name):
    """Upload the image's bytes (streamed to a storage node; X-Checksum-Sha256 optional)."""
    if request.mimetype != OCTET_STREAM:
        raise unsupported_media_type(
            f"send Content-Type: {OCTET_STREAM} (got '{request.mimetype or 'none'}')")
    # image bytes are not JSON: no body limit here (None would mean the app's
    # limit), and they are never buffered
    request.max_content_length = sys.maxsize
    return service.upload(zk(), name, request.stream, request.content_length,
                          request.headers.get("X-Checksum-Sha256"), if_match())
