"""The client side of the agents' P2P endpoints (paths: ``protocol.P2P``),
for the agents and the service alike. Every request is signed with the
cluster secret (``cowfleet.signing``); whatever calls an agent goes through
``post`` (a JSON call) or ``session()`` (one ``requests.Session`` per
thread: streamed bodies, image data, anything else).

``post`` -- the offers, locates, releases and hand-offs, thousands in a
placement at 1,000 agents -- goes through urllib3 directly (one pool
manager per thread), with ``requests``' exception types: requests' own
layers (hooks, cookie and setting merges, the prepared request) cost more
than the call. Measured here, client CPU of a signed call against a
werkzeug agent, 8 threads: 0.71-0.88 ms with a requests session, 0.44-0.46
with urllib3 (bench/README.md, session 18).

Connections are not reused across calls: the agents' server (werkzeug's)
answers every request with ``Connection: close``. Measured on this 2-core
machine, a signed call costs ~2.0-2.4 ms of CPU (client and server); with a
keep-alive server (waitress, one trial) ~1.25 ms. Not switched: waitress
buffers a request's whole body before the handler sees it, and the storage
agent's upload route streams image data (bench/README.md, session 17)."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Callable

import requests
import urllib3

from cowfleet.config import cluster_secret
from cowfleet.signing import P2PAuth

TIMEOUT = 3.0

_local = threading.local()
# signs every call, the sessions' and post's: the secret asked each time, its key derived once
_auth = P2PAuth(cluster_secret)
# called after each call with (route, seconds, outcome: "ok", an HTTP status, or
# the exception's name): the agents' metrics (agents/metrics.py) time their calls
# by the route called (a ``protocol.P2P`` path), never by a whole URL
_observers: list[Callable[[str, float, str], None]] = []


def observe(fn: Callable[[str, float, str], None]) -> None:
    _observers.append(fn)


def session() -> requests.Session:
    """This thread's session."""
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
        s.auth = _auth
        # the cluster's own calls: a proxy set in the node's environment for
        # its outbound traffic must not carry them (nor a .netrc sign them);
        # and not reading the environment on every call saves ~0.3 of the
        # ~2.4 ms of CPU a call costs (client and agent in one process)
        s.trust_env = False
    return s


def _pool() -> urllib3.PoolManager:
    """This thread's pool manager (urllib3 reads no proxy from the
    environment: a node's proxy never carries the cluster's calls)."""
    pm = getattr(_local, "pool", None)
    if pm is None:
        pm = _local.pool = urllib3.PoolManager(retries=False)
    return pm


def _signed(route_url: str, data: bytes) -> dict[str, str]:
    """The headers of a JSON POST of ``data`` to ``route_url``."""
    # the path as urllib3 sends it (it normalizes dot segments and escapes)
    sent = urllib3.util.parse_url(route_url)
    return {"Content-Type": "application/json",
            **_auth.headers("POST", sent.path or "/", sent.query or "", hashlib.sha256(data).hexdigest())}


def post(address: str, route: str, body: dict, timeout: float = TIMEOUT) -> dict:
    """One P2P call to the agent at ``address`` (its base URL), ``route`` a
    ``protocol.P2P`` path: the JSON answer; raises ``requests``'
    ConnectionError or Timeout when the call cannot be made, HTTPError on an
    HTTP error status."""
    t0 = time.perf_counter()
    outcome = "ok"
    url = address + route
    try:
        data = json.dumps(body, allow_nan=False).encode()     # as requests' json= (NaN is no JSON)
        try:
            resp = _pool().request("POST", url, body=data, headers=_signed(url, data), timeout=timeout)
        # as requests maps them (a refused connection is, to urllib3, a
        # kind of connect timeout)
        except urllib3.exceptions.NewConnectionError as exc:
            raise requests.ConnectionError(f"{url}: {exc}") from exc
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise requests.ConnectTimeout(f"{url}: {exc}") from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.ReadTimeout(f"{url}: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:      # reset, closed mid-answer, ...
            raise requests.ConnectionError(f"{url}: {exc}") from exc
        if resp.status >= 400:
            outcome = str(resp.status)
            answer = requests.Response()          # what a caller of requests would look at
            answer.status_code, answer.reason, answer.url, answer._content = resp.status, resp.reason, url, resp.data
            raise requests.HTTPError(f"{resp.status} {resp.reason} for url: {url}", response=answer)
        return json.loads(resp.data)
    except Exception as exc:
        if outcome == "ok":
            outcome = type(exc).__name__
        raise
    finally:
        for fn in _observers:
            fn(route, time.perf_counter() - t0, outcome)
