"""Application factory: blueprints, auth, problem+json for every error."""
from __future__ import annotations

import logging
import os

from flask import Flask, g, request
from kazoo.exceptions import ConnectionLoss, KazooException, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError
from werkzeug.exceptions import HTTPException

from cowfleet.models import DEFAULT_FLAVORS
from cowfleet.service import auth, metrics, openapi
from cowfleet.service.api import ZooKeeperHolder, discard_body, zk_unavailable
from cowfleet.service.flavors.views import bp as flavors
from cowfleet.service.groups.views import bp as groups
from cowfleet.service.images.views import bp as images
from cowfleet.service.mirror import Mirror
from cowfleet.service.network.views import bp as network
from cowfleet.service.nodes.views import bp as nodes
from cowfleet.service.tokens.views import bp as tokens
from cowfleet.protocol import ProblemType
from cowfleet.service.problems import Problem, from_http_exception, unavailable
from cowfleet.zk import layout
from cowfleet.zk.connection import create_quietly

# open without a token: health, metrics, and the API's description (it holds no data)
OPEN_PATHS = ("/healthz", "/metrics", "/v1/openapi.json")
MAX_BODY = 1 << 20  # JSON bodies; image bytes go through a streamed endpoint

log = logging.getLogger(__name__)


def _bootstrap(zk) -> None:
    for flavor in DEFAULT_FLAVORS:
        create_quietly(zk, layout.flavor(flavor.name), flavor.to_bytes())
        create_quietly(zk, layout.users_guard(layout.flavor(flavor.name)), b"")   # zk/groups.py


class _Holder(ZooKeeperHolder):
    def get(self):
        fresh = self._zk is None
        zk = super().get()
        if fresh:
            _bootstrap(zk)
        return zk


def create_app(zk_hosts: str | None = None, tokens_file: str | None = None) -> Flask:
    app = Flask("cowfleet")
    app.config["MAX_BODY"] = MAX_BODY
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY + 1      # see api.json_body
    hosts = zk_hosts or os.environ.get("COWFLEET_ZK", "127.0.0.1:2181")
    app.extensions["cowfleet.zk"] = _Holder(hosts)
    app.extensions["cowfleet.mirror"] = Mirror()
    # where tokens are looked up, in order: the file, then ZooKeeper
    app.extensions["cowfleet.tokens"] = [
        auth.TokenStore(tokens_file or os.environ.get("COWFLEET_TOKENS_FILE")),
        auth.ZooKeeperTokens(lambda: app.extensions["cowfleet.zk"].usable())]

    for bp in (images, flavors, groups, nodes, network, tokens):
        app.register_blueprint(bp)

    # the scrape counts groups and instances by state: from the mirror, like lists
    metrics.install(app, lambda: app.extensions["cowfleet.mirror"].reader(
        app.extensions["cowfleet.zk"].usable(timeout=2)))

    @app.get("/v1/openapi.json")
    def openapi_document():
        if "document" not in app.extensions.setdefault("cowfleet.openapi", {}):
            app.extensions["cowfleet.openapi"]["document"] = openapi.build(app)
        return app.extensions["cowfleet.openapi"]["document"]

    @app.before_request
    def authenticate():
        if request.path in OPEN_PATHS:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "Unauthorized", "send Authorization: Bearer <token>",
                          headers={"WWW-Authenticate": 'Bearer realm="cowfleet"'}, type=ProblemType.UNAUTHORIZED)
        role = next(filter(None, (store.role_of(token.strip())
                                  for store in app.extensions["cowfleet.tokens"])), None)
        if role is None:
            raise Problem(401, "Unauthorized", "the bearer token is not valid",
                          headers={"WWW-Authenticate": 'Bearer realm="cowfleet", error="invalid_token"'},
                          type=ProblemType.UNAUTHORIZED)
        if not auth.allowed(role, request.method, request.path):
            raise Problem(403, "Forbidden", f"role '{role}' may not {request.method} {request.path}",
                          type=ProblemType.FORBIDDEN)
        g.role = role
        return None

    @app.get("/healthz")
    def healthz():
        try:
            zk = app.extensions["cowfleet.zk"].usable(timeout=2)
            zk.exists(layout.ROOT)
        except Exception as exc:  # any failure here means: not healthy
            raise unavailable(f"ZooKeeper unreachable: {exc}")
        return {"status": "ok", "zookeeper": zk.state}

    @app.errorhandler(Problem)
    def problem(exc: Problem):
        return exc.response()

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:     # werkzeug's: a Content-Length over the limit, nothing read yet
            discard_body()
        return from_http_exception(exc).response()

    @app.errorhandler(ConnectionLoss)
    @app.errorhandler(SessionExpiredError)
    @app.errorhandler(KazooTimeoutError)
    def zk_down(exc):
        return zk_unavailable().response()

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if isinstance(exc, KazooException):
            log.warning("ZooKeeper error on %s %s: %r", request.method, request.path, exc)
            return unavailable(f"ZooKeeper error: {type(exc).__name__}", retry_after=2).response()
        log.exception("unhandled error on %s %s", request.method, request.path)
        return Problem(500, "Internal Server Error", "unexpected error; see the service log").response()

    return app
