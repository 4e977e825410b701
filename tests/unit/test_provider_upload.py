"""The image upload as coded against issue 3's contract (the endpoint is built on
main): ``PUT /v1/images/{name}/data``, raw bytes streamed, octet-stream,
``X-Checksum-Sha256``. A loopback stand-in records what the provider sends."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cowfleet.client import ApiError, Client
from cowfleet.provider.resources import RESOURCES


class Recorder(BaseHTTPRequestHandler):
    seen: list = []
    exists = False                    # what GET /v1/images/up answers: 200 or 404

    def do_PUT(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.seen.append((self.path, dict(self.headers), body))
        if self.exists and self.headers.get("If-None-Match") == "*":     # as the service does
            return self._send(412, {"title": "Precondition Failed", "status": 412,
                                    "detail": "image 'up' already exists (If-None-Match: *)"})
        if self.path.endswith("/data") and self.headers.get("X-Checksum-Sha256") != hashlib.sha256(body).hexdigest():
            return self._send(422, {"title": "Unprocessable Entity", "status": 422, "detail": "checksum",
                                    "errors": {"X-Checksum-Sha256": ["does not match the body"]}})
        self._send(200, {"name": "up", "status": "pending"})

    def do_GET(self):
        if self.exists:
            return self._send(200, {"name": "up", "status": "available"})
        self._send(404, {"title": "Not Found", "status": 404, "detail": "no such image"})

    def do_DELETE(self):
        self.seen.append((f"DELETE {self.path}", dict(self.headers), b""))
        self._send(404, {"title": "Not Found", "status": 404, "detail": "no such image"})

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    Recorder.seen, Recorder.exists = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Client(f"http://127.0.0.1:{server.server_address[1]}", "t0k")
    server.shutdown()
    server.server_close()


def test_image_with_a_path_puts_the_spec_then_streams_the_bytes(stand_in, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\x55\xaa" * 300_000)
    state = {"name": "up", "source_url": None, "path": str(disk), "format": "raw", "min_replicas": 1,
             "labels": None}
    RESOURCES["cowfleet_image"].write(stand_in, state, None)
    (spec_path, spec_headers, spec), (data_path, headers, body) = Recorder.seen
    assert spec_path == "/v1/images/up" and json.loads(spec)["source_url"] is None
    assert spec_headers["If-None-Match"] == "*"                # a create: never onto an image already there
    assert data_path == "/v1/images/up/data"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Authorization"] == "Bearer t0k"
    assert headers["X-Checksum-Sha256"] == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert body == disk.read_bytes()


def test_upload_errors_are_api_errors(stand_in, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"x")
    with pytest.raises(ApiError) as err:
        stand_in.upload_image("up", disk, sha256="0" * 64)
    assert err.value.status == 422 and "X-Checksum-Sha256" in err.value.problem["errors"]


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_upload_removes_only_an_image_it_made(stand_in, tmp_path, existed):
    from cowfleet.provider.diagnostics import ProviderError
    Recorder.exists = existed
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"bytes")
    state = {"name": "up", "source_url": None, "path": str(disk), "format": "raw", "min_replicas": 1,
             "labels": None, "sha256": "0" * 64}      # not the file's: the upload is refused
    with pytest.raises((ApiError, ProviderError)):
        RESOURCES["cowfleet_image"].write(stand_in, state, None)
    deletes = [p for p, _, _ in Recorder.seen if p.startswith("DELETE")]
    assert deletes == ([] if existed else ["DELETE /v1/images/up"])
    # an image that was there already is refused by the create-only PUT: no upload at all
    assert [p for p, _, _ in Recorder.seen if p.endswith("/data")] == ([] if existed else ["/v1/images/up/data"])
