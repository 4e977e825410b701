"""Limits answered as problem+json where the app is not the one answering:
gunicorn's own errors, and a storage node whose disk fills mid-upload."""
from __future__ import annotations

import errno
import json
import socket
import logging

from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from cowfleet.agents.p2p_server import P2PServer
from cowfleet.agents.storage.copy_store import CopyStore
from cowfleet.agents.storage.data_server import DataServer
from cowfleet.models import Image
from cowfleet.protocol import ProblemType
from cowfleet.service.problems import server_error_bytes


def _parse(raw: bytes) -> tuple[str, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body)
    return status, headers, json.loads(body)


def test_server_errors_are_typed_problems():
    for status, reason, kind in ((414, "URI Too Long", ProblemType.REQUEST_LINE_TOO_LONG),
                                 (431, "Request Header Fields Too Large", ProblemType.HEADERS_TOO_LARGE),
                                 (400, "Bad Request", ProblemType.MALFORMED_REQUEST),
                                 (501, "Not Implemented", ProblemType.BLANK)):
        line, headers, body = _parse(server_error_bytes(status, reason, "what gunicorn said <b>"))
        assert line == f"HTTP/1.1 {status} {reason}"
        assert headers["Content-Type"] == "application/problem+json" and headers["Connection"] == "close"
        assert body == {"type": kind, "title": reason, "status": status, "detail": "what gunicorn said <b>"}


def test_gunicorn_writes_its_errors_as_problems():
    from gunicorn import util

    import cowfleet.service.gunicorn_conf  # noqa: F401  (replaces gunicorn's error writer)
    a, b = socket.socketpair()
    try:
        util.write_error(a, 431, "Request Header Fields Too Large", "too many")
        a.close()
        raw = b.makefile("rb").read()
    finally:
        b.close()
    assert _parse(raw)[2]["type"] == ProblemType.HEADERS_TOO_LARGE


def test_a_full_disk_refuses_the_upload_with_a_problem(tmp_path):
    def store(image, chunks, expected):
        for _ in chunks:
            raise OSError(errno.ENOSPC, "No space left on device")

    server = DataServer("s1", CopyStore(tmp_path), lambda name: Image(name=name), store, lambda: None)
    env = EnvironBuilder(method="PUT", path="/v1/images/big/data", data=b"\x01" * 4096,
                         content_type="application/octet-stream").get_environ()
    resp = _served(server, env)
    assert resp.status_code == 413 and resp.mimetype == "application/problem+json"
    assert json.loads(resp.get_data())["type"] == ProblemType.IMAGE_TOO_LARGE


def test_zookeeper_away_during_an_upload_is_503_not_a_failed_node(tmp_path):
    from kazoo.exceptions import ConnectionLoss

    def image(name):
        raise ConnectionLoss()

    server = DataServer("s1", CopyStore(tmp_path), image, lambda *a: None, lambda: None)
    env = EnvironBuilder(method="PUT", path="/v1/images/big/data", data=b"\x01" * 4096,
                         content_type="application/octet-stream").get_environ()
    resp = _served(server, env)
    assert resp.status_code == 503 and resp.mimetype == "application/problem+json"
    assert json.loads(resp.get_data())["type"] == ProblemType.UNAVAILABLE


def _served(server, env):
    """The answer of the agent's P2P server with the data routes on it."""
    p2p = P2PServer(logging.getLogger("test"))
    server.add_routes(p2p)
    return p2p.respond(Request(env))
