"""The client side of the agents' P2P endpoints (paths: ``protocol.P2P``),
for the agents and the service alike: one ``requests.Session`` per thread.
Every request a session sends is signed with the cluster secret
(``cowfleet.signing``); whatever calls an agent goes through ``session()``.

Connections are not reused across calls: the agents' server (werkzeug's)
answers every request with ``Connection: close``. Measured on this 2-core
machine, a signed call costs ~2.0-2.4 ms of CPU (client and server); with a
keep-alive server (waitress, one trial) ~1.25 ms. Not switched: waitress
buffers a request's whole body before the handler sees it, and the storage
agent's upload route streams image data (bench/README.md, session 17)."""
from __future__ import annotations

import threading
import time
from typing import Callable

import requests

from cowfleet.config import cluster_secret
from cowfleet.signing import P2PAuth

TIMEOUT = 3.0

_local = threading.local()
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
        s.auth = P2PAuth(cluster_secret)
        # the cluster's own calls: a proxy set in the node's environment for
        # its outbound traffic must not carry them (nor a .netrc sign them);
        # and not reading the environment on every call saves ~0.3 of the
        # ~2.4 ms of CPU a call costs (client and agent in one process)
        s.trust_env = False
    return s


def post(address: str, route: str, body: dict, timeout: float = TIMEOUT) -> dict:
    """One P2P call to the agent at ``address`` (its base URL), ``route`` a
    ``protocol.P2P`` path: the JSON answer; raises on a connection error or
    an HTTP error status."""
    t0 = time.perf_counter()
    outcome = "ok"
    try:
        resp = session().post(address + route, json=body, timeout=timeout)
        if resp.status_code >= 400:
            outcome = str(resp.status_code)
        resp.raise_for_status()
        return resp.json()
    except Exception as exc:
        if outcome == "ok":
            outcome = type(exc).__name__
        raise
    finally:
        for fn in _observers:
            fn(route, time.perf_counter() - t0, outcome)
