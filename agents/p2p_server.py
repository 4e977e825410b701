"""The agents' P2P server: one werkzeug routing ``Map`` (what Flask routes
with) for every route an agent serves -- the JSON calls of both agents
(``protocol.P2P``: offers, deploy, locate, ...), the storage agent's image
data, ``/healthz`` and the membership record -- served by werkzeug's
threaded server. The client side is ``cowfleet.p2p``.

Not Flask: an agent needs routing and a server, not an application with
its request context, sessions and error pages; werkzeug gives both and is
what Flask runs on.

Answers: a path no route takes -- or a method its route does not take --
is a 404 problem+json (a JSON route is POST only); a JSON route that raises
is a 500 problem+json naming the exception.
"""
from __future__ import annotations

import functools
import json
import logging
import threading
import time
from typing import Callable

from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

# handler(request, **converted path parts) -> Response
Handler = Callable[..., Response]
# handler(JSON object body) -> (status, JSON answer)
JsonHandler = Callable[[dict], "tuple[int, dict]"]


class P2PServer:
    def __init__(self, log: logging.Logger, observe: Callable[[str, int, float], None] | None = None):
        self.log = log
        self._observe = observe     # (path, status, seconds) of every request served: the agent's metrics
        # a path is matched as the request names it ('//' is no '/')
        self.map = Map(merge_slashes=False)
        self._http = None

    # -- routes -------------------------------------------------------------------
    def route(self, rule: str, handler: Handler, methods: list[str] | None = None,
              converters: dict[str, type[BaseConverter]] | None = None) -> None:
        """``rule`` (werkzeug syntax, ``converters`` for its parts) answered by
        ``handler``; every method when ``methods`` is None."""
        self.map.converters.update(converters or {})
        self.map.add(Rule(rule, endpoint=handler, methods=methods))

    def json_route(self, path: str, handler: JsonHandler) -> None:
        """POST ``path`` with a JSON object: ``handler(body) -> (status, answer)``."""
        self.route(path, functools.partial(self._json, handler), methods=["POST"])

    def _json(self, handler: JsonHandler, request: Request) -> Response:
        try:
            body = request.get_json(force=True, silent=True)
            if not isinstance(body, dict):
                return problem(400, "send a JSON object")
            status, answer = handler(body)
        except Exception as exc:
            self.log.exception("P2P %s %s failed", request.method, request.path)
            return problem(500, f"{type(exc).__name__}: {exc}")
        return json_answer(answer, status)

    def respond(self, request: Request) -> Response:
        t0 = time.perf_counter()
        resp = self._respond(request)
        if self._observe is not None:
            self._observe(request.path, resp.status_code, time.perf_counter() - t0)
        return resp

    def _respond(self, request: Request) -> Response:
        try:
            handler, args = self.map.bind("p2p").match(request.path, method=request.method)
        except HTTPException:       # no such path, a method its route does not take, a redirect
            return Response(json.dumps({"title": "Not Found", "status": 404}), status=404,
                            mimetype="application/problem+json")
        return handler(request, **args)

    # -- serving ------------------------------------------------------------------
    def serve(self, listen: str) -> str:
        """Serve on ``listen`` (HOST:PORT, port 0: any) in a thread; returns the base URL."""
        host, _, port = listen.rpartition(":")
        self._http = make_server(host or "127.0.0.1", int(port or 0), Request.application(self.respond),
                                 threaded=True)
        threading.Thread(target=self._http.serve_forever, name="p2p", daemon=True).start()
        return f"http://{host or '127.0.0.1'}:{self._http.server_port}"

    def shutdown(self) -> None:
        if self._http is not None:
            self._http.shutdown()


def json_answer(answer: dict | bytes, status: int = 200) -> Response:
    return Response(answer if isinstance(answer, bytes) else json.dumps(answer), status=status,
                    mimetype="application/json")


def problem(status: int, detail: str) -> Response:
    return Response(json.dumps({"title": "P2P error", "status": status, "detail": detail}), status=status,
                    mimetype="application/problem+json")
