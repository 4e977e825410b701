import sys
import threading

from flask import request

from cowfleet.service.api import endpoint, if_match, zk
from cowfleet.service.images import service
from cowfleet.service.images.schemas import ImageSchema
from cowfleet.specs import ImageSpecSchema
from cowfleet.service.problems import too_many_uploads, unsupported_media_type
from cowfleet.service.resource import crud_blueprint

bp = crud_blueprint("images", "/v1/images", service, ImageSpecSchema, ImageSchema, kind="image")

OCTET_STREAM = "application/octet-stream"

# An upload holds one of the worker's 4 threads (gunicorn_conf.threads) for
# as long as its client takes to send it; half of them stay for everything
# else, so slow uploads (or someone opening many) never stall the API. A
# further upload is refused at once, before its body is read: 429, Retry-After.
UPLOADS_PER_WORKER = 2
_upload_slots = threading.BoundedSemaphore(UPLOADS_PER_WORKER)


@bp.put("/<name>/data")
@endpoint(out=ImageSchema, raw_body=OCTET_STREAM, errors=(404, 413, 429, 502))
def put_data(name):
    """Upload the image's bytes (streamed to a storage node; X-Checksum-Sha256 optional)."""
    if request.mimetype != OCTET_STREAM:
        raise unsupported_media_type(
            f"send Content-Type: {OCTET_STREAM} (got '{request.mimetype or 'none'}')")
    # image bytes are not JSON: no body limit here (None would mean the app's
    # limit), and they are never buffered
    request.max_content_length = sys.maxsize
    if not _upload_slots.acquire(blocking=False):
        raise too_many_uploads(UPLOADS_PER_WORKER)
    try:
        return service.upload(zk(), name, request.stream, request.content_length,
                              request.headers.get("X-Checksum-Sha256"), if_match())
    finally:
        _upload_slots.release()
