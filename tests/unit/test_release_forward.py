"""A rack leader forwards a release to the other agents of its rack
(ComputeAgent.release), through cowfleet.p2p.post(address, route, body):
the call went with the old post(url, body) arguments after post changed, so
every forward raised in a future nobody read and the rack's reservations
waited out their 10 s."""
from __future__ import annotations

import threading
from types import SimpleNamespace

from cowfleet.agents.compute import agent as agent_module
from cowfleet.agents.handshake import Reservations
from cowfleet.models import NodeInfo
from cowfleet.protocol import P2P


class _Inline:
    """A pool that runs what it is given at once, and keeps its errors."""

    def __init__(self):
        self.errors = []

    def submit(self, fn, *args, **kw):
        try:
            fn(*args, **kw)
        except Exception as exc:         # what a future would have kept unread
            self.errors.append(exc)


def test_a_leader_forwards_a_release_to_each_other_agent_of_its_rack(monkeypatch):
    calls = []
    monkeypatch.setattr(agent_module, "post",
                        lambda address, route, body, timeout=None: calls.append((address + route, body, timeout)))
    peers = [NodeInfo(name=n, role="compute", rack="r1", address=f"http://10.0.0.{i}:8") for i, n in
             enumerate(["me", "b", "c"], start=1)]
    leading = threading.Event()
    leading.set()
    reservations = Reservations()
    reservations.hold("req-1", 2, 1024)
    me = SimpleNamespace(name="me", rack="r1", leading=leading, reservations=reservations,
                         handshake_pool=_Inline(), peers=SimpleNamespace(nodes=lambda role, rack: peers))
    status, answer = agent_module.ComputeAgent.release(me, {"request": "req-1"})
    assert (status, answer) == (200, {"released": "req-1"})
    assert me.handshake_pool.errors == []
    assert calls == [(f"http://10.0.0.{i}:8{P2P.RELEASE}", {"request": "req-1", "forward": False}, 1)
                     for i in (2, 3)]
    assert reservations.held_by_others("other") == (0, 0)
    # a forwarded release is not forwarded again
    calls.clear()
    agent_module.ComputeAgent.release(me, {"request": "req-1", "forward": False})
    assert calls == []
