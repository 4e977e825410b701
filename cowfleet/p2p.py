"""The client side of the agents' P2P endpoints (paths: ``protocol.P2P``),
for the agents and the service alike. Every request is signed with the
cluster secret (``cowfleet.signing``); whatever calls an agent goes through
``post`` (a JSON call) or ``session()`` (one ``requests.Session`` per
thread: streamed bodies, image data, anything else).

``post`` -- the offers, locates, releases and hand-offs, thousands in a
placement at 1,000 agents -- goes through urllib3 directly, with
``requests``' exception types: requests' own layers (hooks, cookie and
setting merges, the prepared request) cost more than the call. Measured
here, client CPU of a signed call against a werkzeug agent, 8 threads:
0.71-0.88 ms with a requests session, 0.44-0.46 with urllib3
(bench/README.md, session 18).

Its connections are kept and reused, in one pool manager for the process
(urllib3's is thread-safe): a compute agent's server (waitress) keeps them
open, and a call on a kept connection cost ~1.0-1.2 ms of CPU, client and
server together, against ~1.9 on a new one (agents/p2p_server.py). One for
the process, not one a thread: a rack leader asks its agents from a pool of
threads, and a coordinator its leaders from another, so a thread seldom
calls the peer it called last. A kept connection the peer closed meanwhile
(idle, or restarted) is seen closed before it is used, once its close has
arrived, and a new one made; one that the peer closes as the call goes out
fails it with a protocol error, and the call is made once more on a new
connection. Every JSON call is safe to repeat: an offer's reservation is
held by request (a second replaces the first), a hand-off of a request being
coordinated finds it locked, locates and releases change nothing twice."""
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
# every pool a peer: a coordinator at 1,000 agents calls 100 leaders; up to
# 8 connections kept a peer, more made when a burst needs them (block=False)
_peers = urllib3.PoolManager(num_pools=1024, maxsize=8, block=False, retries=False)
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


def _signed(route_url: str, data: bytes) -> dict[str, str]:
    """The headers of a JSON POST of ``data`` to ``route_url``."""
    # the path as urllib3 sends it (it normalizes dot segments and escapes)
    sent = urllib3.util.parse_url(route_url)
    return {"Content-Type": "application/json",
            **_auth.headers("POST", sent.path or "/", sent.query or "", hashlib.sha256(data).hexdigest())}


def _request(url: str, data: bytes, timeout: float) -> urllib3.BaseHTTPResponse:
    """POST on a kept connection; once more on a new one if the peer closed
    it under the call (not on a timeout: a peer that does not answer is not
    asked twice). Hand-written: urllib3's Retry repeats a POST on a protocol
    error only if it also repeats it on a read timeout."""
    for last in (False, True):
        try:
            # urllib3 reads no proxy from the environment: a node's proxy never carries the cluster's calls
            return _peers.request("POST", url, body=data, headers=_signed(url, data), timeout=timeout)
        except urllib3.exceptions.ProtocolError:
            if last:
                raise
    raise AssertionError("unreachable")


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
            resp = _request(url, data, timeout)
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
