"""The agents' P2P server: one werkzeug routing ``Map`` (what Flask routes
with) for every route an agent serves -- the JSON calls of both agents
(``protocol.P2P``: offers, deploy, locate, ...), the storage agent's image
data, ``/healthz`` and the membership record -- served by werkzeug's
threaded server. The client side is ``cowfleet.p2p``.

Not Flask: an agent needs routing and a server, not an application with
its request context, sessions and error pages; werkzeug gives both and is
what Flask runs on.

Every route but ``/healthz`` and ``/metrics`` takes only requests signed
with the cluster secret (``cowfleet.signing``): an unsigned one is a 401, a
stale, replayed, altered or foreign one a 403 (problem+json), before its
handler sees it. Those two stay open: a load balancer's or Prometheus'
probe carries no signature, and they tell nothing that lets anyone in.
Without a secret (an open cluster) nothing is checked.

Two servers, by what the routes need. A server whose routes stream no
request body (the compute agent's) is waitress: connections kept alive, its
own HTTP parser, a fixed pool of threads. A call cost ~1.0-1.2 ms of CPU,
client and server together, against werkzeug's 1.8-2.4 (one process, 8
threads, signed calls, bench/README.md session 20): the rack leaders'
offer rounds at 1,000 agents are ~1,100 calls. The storage agent's upload
route streams image data to disk as it comes, which waitress does not do
(it spools a body before the handler runs): werkzeug's threaded server
serves that one, a thread and a connection a request.

Answers: a path no route takes -- or a method its route does not take --
is a 404 problem+json (a JSON route is POST only); a JSON route that raises
is a 500 problem+json naming the exception.

Every request served is told to ``observe`` (the agent's metrics) by its
route's label, which the map gives: the rule, or the label the route was
added with; a path no route takes is ``OTHER`` (a label per path a caller
makes up would grow the metrics without end).
"""
from __future__ import annotations

import functools
import json
import logging
import threading
import time
from typing import Callable

from kazoo.exceptions import ConnectionLoss
from waitress import wasyncore
from waitress.server import create_server
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from cowfleet.protocol import ProblemType
from cowfleet.signing import Refused, Verifier, canonical_path

# handler(request, **converted path parts) -> Response
Handler = Callable[..., Response]
# handler(JSON object body) -> (status, JSON answer)
JsonHandler = Callable[[dict], "tuple[int, dict]"]

# who may call a route
OPEN = "open"            # anyone: /healthz, /metrics
SIGNED = "signed"        # a request signed with the cluster secret, body included
STREAMED = "streamed"    # signed, its body streamed (image data): UNSIGNED-PAYLOAD allowed

# the route label of a request no route takes
OTHER = "other"

# waitress: requests served at once (a rack leader's rack-offers call waits
# for its agents' answers while the others go on); how long an idle
# connection is kept (a leader asks each agent once a round: only the next
# round reuses it); and connections at once (waitress's default, 100, counts
# its own two sockets, and a leader of 100 racks keeps one from each other
# coordinating leader: past the limit it stops accepting)
THREADS = 16
IDLE_SECONDS = 600
CONNECTIONS = 512
# "Task queue depth is N": every call of a burst past the THREADS in hand
# logged a warning; the agent's metrics time each request instead
logging.getLogger("waitress.queue").setLevel(logging.ERROR)


class P2PServer:
    def __init__(self, log: logging.Logger, observe: Callable[[str, int, float], None] | None = None,
                 secret: bytes | None = None):
        self.log = log
        self._observe = observe     # (route label, status, seconds) of every request served: the agent's metrics
        self._verifier = Verifier(secret) if secret is not None else None
        self._access: dict[int, str] = {}    # id(Rule) -> OPEN | SIGNED | STREAMED
        self._label: dict[int, str] = {}     # id(Rule) -> its route label
        # a path is matched as the request names it ('//' is no '/')
        self.map = Map(merge_slashes=False)
        self._http = None          # werkzeug's server
        self._waitress = None
        self._kind: str | None = None
        self._thread: threading.Thread | None = None

    # -- routes -------------------------------------------------------------------
    def route(self, rule: str, handler: Handler, methods: list[str] | None = None,
              converters: dict[str, type[BaseConverter]] | None = None, access: str = SIGNED,
              label: str | None = None) -> None:
        """``rule`` (werkzeug syntax, ``converters`` for its parts) answered by
        ``handler``; every method when ``methods`` is None; ``access``: OPEN,
        SIGNED or STREAMED; ``label``: the route in the metrics (the rule when None)."""
        self.map.converters.update(converters or {})
        r = Rule(rule, endpoint=handler, methods=methods)
        self.map.add(r)
        self._access[id(r)] = access       # a Rule is unhashable (it compares by value)
        self._label[id(r)] = label or rule

    def json_route(self, path: str, handler: JsonHandler) -> None:
        """POST ``path`` with a JSON object: ``handler(body) -> (status, answer)``."""
        self.route(path, functools.partial(self._json, handler), methods=["POST"])

    def _json(self, handler: JsonHandler, request: Request) -> Response:
        try:
            body = request.get_json(force=True, silent=True)
            if not isinstance(body, dict):
                return problem(400, "send a JSON object")
            status, answer = handler(body)
        except ConnectionLoss as exc:   # the agent cut off from ZooKeeper: a state, not a bug (no traceback)
            self.log.warning("P2P %s %s: %s", request.method, request.path, exc)
            return problem(503, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            self.log.exception("P2P %s %s failed", request.method, request.path)
            return problem(500, f"{type(exc).__name__}: {exc}")
        return json_answer(answer, status)

    def respond(self, request: Request) -> Response:
        t0 = time.perf_counter()
        adapter = self.map.bind("p2p")
        try:
            rule, args = adapter.match(request.path, method=request.method, return_rule=True)
        except HTTPException:       # no such path, a method its route does not take, a redirect
            resp = Response(json.dumps({"title": "Not Found", "status": 404}), status=404,
                            mimetype="application/problem+json")
            label = self._label_of(adapter, request.path)
        else:
            resp = self._respond(request, rule, args)
            label = self._label[id(rule)]
        if self._observe is not None:
            self._observe(label, resp.status_code, time.perf_counter() - t0)
        return resp

    def _label_of(self, adapter, path: str) -> str:
        """The label of a path its request's method did not match: its route's
        when another method would have (a GET of a JSON route counts under that
        route, with its 404), else ``OTHER``."""
        for method in adapter.allowed_methods(path):
            try:
                rule, _ = adapter.match(path, method=method, return_rule=True)
            except HTTPException:
                continue
            return self._label[id(rule)]
        return OTHER

    def _respond(self, request: Request, rule: Rule, args: dict) -> Response:
        access = self._access[id(rule)]
        if self._verifier is not None and access != OPEN:
            try:
                self._verifier.check(request.method, canonical_path(request.path, request.query_string.decode()),
                                     request.headers, request.get_data, streamed=access == STREAMED)
            except Refused as exc:
                self.log.warning("P2P %s %s from %s refused: %s", request.method, request.path,
                                 request.remote_addr, exc.detail)
                resp = problem(exc.status, exc.detail, ProblemType.UNAUTHORIZED if exc.status == 401
                               else ProblemType.FORBIDDEN)
                if exc.status == 401:
                    resp.headers["WWW-Authenticate"] = "CowfleetP2P"
                return resp
        return rule.endpoint(request, **args)

    # -- serving ------------------------------------------------------------------
    def serve(self, listen: str) -> str:
        """Serve on ``listen`` (HOST:PORT, port 0: any) in a thread; returns the
        base URL. werkzeug's server when a route streams its request body,
        else waitress (see above); add the routes first."""
        host, _, port = listen.rpartition(":")
        host = host or "127.0.0.1"
        app = Request.application(self.respond)
        if STREAMED in self._access.values():
            self._http = make_server(host, int(port or 0), app, threaded=True)
            bound, run = self._http.server_port, self._http.serve_forever
        else:
            # no proxy stands before an agent: no X-Forwarded-* handling
            self._waitress = create_server(app, host=host, port=int(port or 0), threads=THREADS,
                                           channel_timeout=IDLE_SECONDS, connection_limit=CONNECTIONS,
                                           asyncore_use_poll=True, clear_untrusted_proxy_headers=False,
                                           ident="cowfleet-agent")
            bound, run = self._waitress.effective_port, self._waitress.run
        self._kind = "werkzeug" if self._http is not None else "waitress"
        self._thread = threading.Thread(target=run, name="p2p", daemon=True)
        self._thread.start()
        return f"http://{host}:{bound}"

    @property
    def server(self) -> str | None:
        """Which server serves (or served): "waitress", "werkzeug"; None before ``serve``."""
        return self._kind

    def shutdown(self) -> None:
        """Stop serving, once (a second call does nothing); returns when the
        port is closed."""
        http, w, self._http, self._waitress = self._http, self._waitress, None, None
        if http is not None:
            http.shutdown()            # its serve_forever closes the socket as it ends
        if w is not None:
            # as waitress closes its own servers: its threads finish the
            # requests in hand (their answers flushed by the loop), then the
            # loop's thread closes every socket and, with none left, ends
            w.task_dispatcher.shutdown()
            w.trigger.pull_trigger(lambda: wasyncore.close_all(w._map, ignore_all=True))
            if self._thread is not None:
                self._thread.join(5)


def json_answer(answer: dict | bytes, status: int = 200) -> Response:
    return Response(answer if isinstance(answer, bytes) else json.dumps(answer), status=status,
                    mimetype="application/json")


def problem(status: int, detail: str, type: str | None = None) -> Response:
    body = {"title": "P2P error", "status": status, "detail": detail}
    if type:
        body["type"] = type
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")
