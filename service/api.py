"""The one decorator every view goes through, and per-process ZooKeeper access.

``@endpoint(body=Schema, out=Schema)`` parses and validates the JSON body
(415 / 400 / 422 as problem+json), calls the view with ``data=``, and dumps
what the view returns through the output schema with its ``ETag``. Views stay
thin; the logic lives in each resource's ``service`` module.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import Response, current_app, json, request
from gunicorn.http.errors import NoMoreData, ParseException
from kazoo.client import KazooState
from kazoo.exceptions import ConnectionLoss, SessionExpiredError
from marshmallow import Schema, ValidationError

from cowfleet.names import NAME_RE, NAME_RULE
from cowfleet.protocol import ProblemType
from cowfleet.service.preconditions import Precondition
from cowfleet.service.problems import (Problem, invalid, malformed, malformed_request, not_found, unavailable,
                                       unsupported_media_type)
from cowfleet.zk.connection import connect, read


@dataclass
class Result:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


ZK_WAIT_SECONDS = 8.0   # how long a request waits for ZooKeeper before a 503


class ZooKeeperHolder:
    """One kazoo session per worker process, opened on first use.

    gunicorn forks workers after importing the app; a session opened before
    the fork would be shared by processes, so the pid is checked.

    While kazoo moves to another server of the ensemble (or the ensemble
    elects a new leader) the connection is down for a few seconds; requests
    wait for it (``usable``) rather than fail, up to ``ZK_WAIT_SECONDS``.
    """

    def __init__(self, hosts: str):
        self.hosts = hosts
        self._zk = None
        self._pid = None
        self._lock = threading.Lock()
        self._connected = threading.Event()

    def _on_state(self, state) -> None:       # kazoo's thread: never block
        if state == KazooState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()

    def get(self):
        with self._lock:
            if self._zk is None or self._pid != os.getpid():
                self._connected = threading.Event()
                self._zk = connect(self.hosts, listener=self._on_state)
                self._pid = os.getpid()
                if self._zk.connected:
                    self._connected.set()
            return self._zk

    def usable(self, timeout: float = ZK_WAIT_SECONDS):
        """The session, once connected; a 503 problem if it stays down."""
        zk = self.get()
        if not self._connected.wait(timeout):
            raise zk_unavailable()
        return zk

    def close(self) -> None:
        with self._lock:
            if self._zk is not None and self._pid == os.getpid():
                self._zk.stop()
                self._zk.close()
            self._zk = None


def zk():
    return current_app.extensions["cowfleet.zk"].usable()


def zk_for_lists():
    """What list views read through: the worker's mirror of the collections
    (``service/mirror.py``), falling back to ZooKeeper where it must."""
    return current_app.extensions["cowfleet.mirror"].reader(zk())


def zk_unavailable() -> Problem:
    return unavailable("ZooKeeper is unavailable; retry", retry_after=2)


def fetch(zk_client, path: str, cls, kind: str, name: str):
    """(record, version) at ``path``, or a 404 problem naming the object."""
    existing_name(name, kind)
    got = read(zk_client, path, cls)
    if got is None:
        raise not_found(kind, name)
    return got


def existing_name(name: str, kind: str) -> str:
    """A name that cannot be valid names nothing: 404 before ZooKeeper sees
    it (kazoo rejects '.' and '..' path segments with an exception)."""
    if not NAME_RE.match(name or ""):
        raise not_found(kind, name)
    return name


def check_name(name: str, field_name: str = "name") -> str:
    if not NAME_RE.match(name or ""):
        raise invalid({field_name: [NAME_RULE]}, f"invalid {field_name} '{name}'")
    return name


def if_match():
    """The write's precondition: ``If-Match`` / ``If-None-Match`` (service/preconditions.py)."""
    return Precondition.from_headers(request.headers.get("If-Match"), request.headers.get("If-None-Match"))


def json_body() -> Any:
    if request.mimetype == "application/json-patch+json":
        raise unsupported_media_type("JSON Patch (RFC 6902) is not supported: " + (
            "send a JSON merge patch (RFC 7386) as application/merge-patch+json or application/json, "
            "e.g. {\"size\": 3}" if request.method == "PATCH" else "send Content-Type: application/json"))
    if request.mimetype not in ("application/json", "application/merge-patch+json") \
            and not request.mimetype.endswith("+json"):
        raise unsupported_media_type(
            f"send Content-Type: application/json (got '{request.mimetype or 'none'}')")
    if request.content_encoding not in (None, "", "identity"):
        raise unsupported_media_type(
            f"Content-Encoding '{request.content_encoding}' is not supported: send the JSON as is")
    # read one byte past the limit: a chunked body (no Content-Length) over it
    # is 413 too, not cut at the limit and parsed (the app's stream limit is
    # MAX_BODY + 1 so that this read can see the extra byte)
    limit = current_app.config["MAX_BODY"]
    raw = read_body(request.stream, limit + 1)
    if len(raw) > limit:
        discard_body()
        raise Problem(413, "Request Entity Too Large", f"a JSON body is at most {limit} bytes",
                      type=ProblemType.BODY_TOO_LARGE)
    if not raw.strip():
        raise malformed("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise malformed(f"the request body is not valid JSON: {exc}")
    except RecursionError:
        raise malformed("the request body is nested too deeply")
    if not isinstance(body, dict):
        raise invalid({"_schema": ["the request body must be a JSON object"]})
    return body


# How much of a refused body is read and thrown away before the answer. gunicorn
# drains at most 64 KiB of a body the app left unread, then closes the socket;
# a client still sending gets a reset (BrokenPipeError in Python's http.client,
# seen in CI with a 2 MiB chunked body) and often never reads our 413. Reading
# the rest first lets it: a modest bound, because a body is data the client
# chose to send anyway, and one that is larger still is cut as before.
DISCARD_BYTES = 16 << 20
DISCARD_SECONDS = 5.0


def discard_body() -> None:
    """Read and drop what is left of the request body (up to DISCARD_BYTES
    and DISCARD_SECONDS), so that the client reads the error we answer
    instead of a connection reset mid-send. Best effort: any error stops it."""
    stream = request.environ.get("wsgi.input")
    if stream is None:
        return
    deadline, left = time.monotonic() + DISCARD_SECONDS, DISCARD_BYTES
    try:
        while left > 0 and time.monotonic() < deadline:
            chunk = stream.read(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)
    except Exception:   # a broken chunk or the client gone: nothing left to spare it
        return


def read_body(stream, size: int) -> bytes:
    """Up to ``size`` bytes of the request body; a 400 malformed-request
    problem if the body itself is broken: a chunk gunicorn cannot parse, or
    the client gone before the end (werkzeug's ClientDisconnected, a 400
    already). Without this they would be 500s."""
    try:
        return stream.read(size)
    except (ParseException, NoMoreData) as exc:
        raise malformed_request(f"the request body is not valid HTTP: {exc}"[:300]) from None


@functools.lru_cache(maxsize=None)
def _schema(cls: type[Schema], many: bool = False) -> Schema:
    """One instance per schema class: building one deep-copies its fields and
    cost ~2 ms a request (a third of a GET's CPU); load and dump leave an
    instance unchanged, so workers' threads share it."""
    return cls(many=many)


def endpoint(body: type[Schema] | None = None, out: type[Schema] | None = None, many: bool = False,
             codes: tuple[int, ...] = (200,), patch: bool = False, raw_body: str | None = None,
             errors: tuple[int, ...] = (), raw_out: str | None = None, query: tuple[dict, ...] = ()):
    """``codes``: the success statuses (documented in the OpenAPI document);
    ``patch``: the body is a JSON merge patch of ``body``'s schema;
    ``raw_body``: the media type of a body the view streams itself;
    ``errors``: error statuses beyond the usual ones of its method;
    ``raw_out``: the media type of a body the view returns itself (a Response);
    ``query``: the query parameters it takes, as OpenAPI parameter objects."""
    def deco(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            if body is not None and not patch:
                try:
                    kwargs["data"] = _schema(body).load(json_body())
                except ValidationError as exc:
                    raise invalid(exc.messages)
            try:
                result = view(*args, **kwargs)
            except (ConnectionLoss, SessionExpiredError):
                # the server went away mid-request: once connected again (to
                # another server), run the view once more -- every view is
                # idempotent: PUT and merge-PATCH converge, DELETE repeats
                zk()
                result = view(*args, **kwargs)
            if isinstance(result, Response):
                return result
            if not isinstance(result, Result):
                result = Result(result)
            if result.body is None:
                resp = Response(status=result.status)
                del resp.headers["Content-Type"]       # no body, no media type
            else:
                payload = _schema(out, many).dump(result.body) if out is not None else result.body
                resp = Response(json.dumps(payload), status=result.status, mimetype="application/json")
                if not many and isinstance(payload, dict) and payload.get("etag"):
                    resp.headers["ETag"] = f'"{payload["etag"]}"'
            resp.headers.update(result.headers)
            return resp
        wrapper.api = {"body": body, "out": out, "many": many, "codes": codes, "patch": patch,
                       "raw_body": raw_body, "errors": errors, "raw_out": raw_out, "query": query,
                       "doc": (view.__doc__ or "").strip()}
        return wrapper
    return deco
