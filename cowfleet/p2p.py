"""The client side of the agents' P2P endpoints (paths: ``protocol.P2P``),
for the agents and the service alike: one ``requests.Session`` per thread,
so connections to a peer are reused across calls."""
from __future__ import annotations

import threading

import requests

TIMEOUT = 3.0

_local = threading.local()


def session() -> requests.Session:
    """This thread's session."""
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
    return s


def post(url: str, body: dict, timeout: float = TIMEOUT) -> dict:
    """One P2P call: the JSON answer; raises on a connection error or an
    HTTP error status."""
    resp = session().post(url, json=body, timeout=timeout)
    resp.raise_for_status()
    return resp.json()
