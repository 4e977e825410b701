"""The storage agent's P2P data routes: ``PUT /v1/images/NAME/data`` takes an
upload (streamed by the service), ``GET /v1/images/NAME/data`` serves a copy
to a peer. Errors are problem+json.

One rule on the agent's P2P server (``agents/p2p_server.py``, a werkzeug
routing ``Map``, beside the JSON routes), the image name a converter of the
API's name rule; every method reaches ``respond``, so any but GET and PUT
is refused here, as a 405 problem (HEAD too, which werkzeug would add to a GET rule).
"""
from __future__ import annotations

import errno
import itertools
import json
from typing import Callable

from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError
from werkzeug.routing import BaseConverter
from werkzeug.wrappers import Request, Response

from cowfleet.agents.p2p_server import STREAMED, P2PServer
from cowfleet.agents.storage.copy_store import CHUNK, ChecksumMismatch, CopyStore, FormatMismatch
from cowfleet.models import Image
from cowfleet.names import NAME_PATTERN
from cowfleet.protocol import ProblemType, image_data_path


class _ImageName(BaseConverter):
    regex = NAME_PATTERN    # the API's name rule (cowfleet.names): no trailing '-'


DATA = "/v1/images/<image:name>/data"
CONVERTERS = {"image": _ImageName}


class UploadRefused(Exception):
    """A problem+json answer; ``type`` is a ``ProblemType`` the service
    passes on to the user (it branches on it, never on the title)."""

    def __init__(self, status: int, title: str, detail: str, type: str = ProblemType.BLANK):
        super().__init__(detail)
        self.status, self.title, self.detail, self.type = status, title, detail, type


def _problem(exc: UploadRefused) -> Response:
    return Response(json.dumps({"type": exc.type, "title": exc.title, "status": exc.status,
                                "detail": exc.detail}),
                    status=exc.status, mimetype="application/problem+json")


class DataServer:
    """``store(image, chunks, expected_sha) -> (sha256, size)`` makes and
    publishes a copy; ``image(name)`` reads a record; ``stored()`` is called
    after an upload landed (peers replicate once its record appears)."""

    def __init__(self, node: str, copies: CopyStore, image: Callable[[str], Image | None],
                 store: Callable, stored: Callable[[], None]):
        self.node, self.copies, self.image, self.store, self.stored = node, copies, image, store, stored

    def add_routes(self, server: P2PServer) -> None:
        # the upload's bytes are not in its signature (cowfleet/signing.py says why)
        server.route(DATA, self.respond, converters=CONVERTERS, access=STREAMED, label=image_data_path("{name}"))

    def respond(self, request: Request, name: str) -> Response:
        handler = {"GET": self.serve_copy, "PUT": self.receive_upload}.get(request.method)
        try:
            if handler is None:
                raise UploadRefused(405, "Method Not Allowed", "use GET or PUT")
            try:
                return handler(request, name)
            except (KazooException, KazooTimeoutError) as exc:
                # this agent's ZooKeeper session moving to another member
                # (reading or recording the image): retry, not a failed node
                raise UploadRefused(503, "Service Unavailable", f"{self.node} could not reach ZooKeeper "
                                    f"({type(exc).__name__}); nothing was recorded, retry", ProblemType.UNAVAILABLE)
        except UploadRefused as exc:
            return _problem(exc)

    def serve_copy(self, request: Request, name: str) -> Response:
        if not self.copies.path(name).exists():
            raise UploadRefused(404, "Not Found", f"{self.node} holds no copy of image '{name}'",
                                ProblemType.NOT_FOUND)
        return Response(self.copies.chunks(name), mimetype="application/octet-stream",
                        headers={"Content-Length": str(self.copies.size(name))},
                        direct_passthrough=True)

    def receive_upload(self, request: Request, name: str) -> Response:
        image = self.image(name)
        if image is None:
            raise UploadRefused(404, "Not Found", f"image '{name}' does not exist", ProblemType.NOT_FOUND)
        if image.source_url:
            raise UploadRefused(409, "Conflict", f"image '{name}' is fetched from its source_url",
                                ProblemType.IMAGE_HAS_SOURCE)
        given = (request.headers.get("X-Checksum-Sha256") or "").strip().lower() or None
        if given and image.sha256 and given != image.sha256:
            raise UploadRefused(409, "Conflict", f"image '{name}' already holds other data "
                                f"(sha256 {image.sha256}); image data is immutable", ProblemType.IMAGE_DATA_IMMUTABLE)
        expected = given or image.sha256
        stream = request.stream
        first = stream.read(CHUNK)
        if not first:
            raise UploadRefused(400, "Bad Request", "the body is empty; send the image bytes",
                                ProblemType.MALFORMED_BODY)
        try:
            sha, size = self.store(image, itertools.chain([first], iter(lambda: stream.read(CHUNK), b"")),
                                   expected)
        except FormatMismatch as exc:
            raise UploadRefused(422, "Format Mismatch", f"{exc}; nothing was stored",
                                ProblemType.FORMAT_MISMATCH)
        except ChecksumMismatch as exc:
            if given:   # the bytes are not what the client said it sent
                raise UploadRefused(422, "Checksum Mismatch", f"{exc}; nothing was stored",
                                    ProblemType.CHECKSUM_MISMATCH)
            raise UploadRefused(409, "Conflict", f"image '{name}' already holds other data: {exc}; "
                                "image data is immutable", ProblemType.IMAGE_DATA_IMMUTABLE)
        except ValueError as exc:
            raise UploadRefused(409, "Conflict", str(exc), ProblemType.IMAGE_DATA_IMMUTABLE)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # the partial copy is gone already (CopyStore.receive)
            raise UploadRefused(413, "Content Too Large", f"{self.node} ran out of disk space "
                                "while writing the image; nothing was stored", ProblemType.IMAGE_TOO_LARGE)
        self.stored()
        return Response(json.dumps({"node": self.node, "sha256": sha, "size_bytes": size}),
                        mimetype="application/json")
