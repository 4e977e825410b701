"""agents/metrics.py without an agent process: labels stay bounded, events count."""
from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client
from werkzeug.wrappers import Request

from cowfleet import p2p
from cowfleet.agents.compute.hypervisor import domain_name
from cowfleet.agents.metrics import ATTACHED, AgentMetrics
from cowfleet.agents.p2p_server import P2PServer, json_answer
from cowfleet.agents.storage.copy_store import CopyStore
from cowfleet.agents.storage.data_server import DataServer
from cowfleet.protocol import P2P


def test_routes_are_a_closed_set(tmp_path):
    """The served side's label is the route the P2P server's map matched;
    any path no route takes is "other"."""
    served = []
    server = P2PServer(logging.getLogger("test.p2p"), observe=lambda route, status, s: served.append((route, status)))
    server.json_route(P2P.OFFER, lambda body: (200, {}))
    server.route("/metrics", lambda request: json_answer({}), methods=["GET"])
    (tmp_path / "images").mkdir()
    DataServer("s1", CopyStore(tmp_path / "images"), lambda name: None, None, None).add_routes(server)
    client = Client(Request.application(server.respond))

    def label(path, method="POST"):
        served.clear()
        client.open(path, method=method, json={})
        return served[0][0]
    assert label("/v1/offer") == "/v1/offer"
    assert label("/v1/offer", "GET") == "/v1/offer"       # a wrong method: its route's 404
    assert label("/metrics", "GET") == "/metrics"
    assert label("/v1/images/demo/data", "GET") == "/v1/images/{name}/data"
    for made_up in ("/v1/images/../data", "/v1/images/a/b/data", "/x", "/v1/offer/", ""):
        assert label(made_up) == "other", made_up


def test_calls_are_labelled_by_the_route_called(monkeypatch):
    called = []
    monkeypatch.setattr(p2p, "_observers", [])
    p2p.observe(lambda route, s, outcome: called.append((route, outcome)))
    with pytest.raises(requests.ConnectionError):
        p2p.post("http://127.0.0.1:1", P2P.LOCATE, {}, timeout=2)     # nothing listens on port 1
    assert called[-1] == (P2P.LOCATE, "ConnectionError")


def _samples(m: AgentMetrics) -> dict:
    text = m.response().get_data(as_text=True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_events_and_state_of_an_agent():
    leading = threading.Event()
    leading.set()
    agent = SimpleNamespace(name="n1", role="node", rack="r1", leading=leading, connected=threading.Event(),
                            losses=2, capacity=lambda: {"vcpus": 8}, allocated=lambda: 1 / 0)
    m = AgentMetrics(agent)
    m.started("i1", ATTACHED, 0.2)
    m.ready("i1")
    m.ready("i1")            # once only
    m.ready("adopted")       # not started here: not timed
    m.failure("overlay")
    got = _samples(m)
    assert got[("cowfleet_agent_info", (("node", "n1"), ("rack", "r1"), ("role", "node")))] == 1
    assert got[("cowfleet_agent_leader", ())] == 1
    assert got[("cowfleet_agent_zookeeper_connected", ())] == 0
    assert got[("cowfleet_agent_zookeeper_sessions_lost", ())] == 2
    assert got[("cowfleet_agent_capacity", (("resource", "vcpus"),))] == 8
    assert not [k for k in got if k[0] == "cowfleet_agent_allocated"]     # unreadable: left out
    assert got[("cowfleet_agent_instance_start_seconds_count", (("path", "attached"),))] == 1
    assert got[("cowfleet_agent_instance_ready_seconds_count", (("path", "attached"),))] == 1
    assert got[("cowfleet_agent_failures_total", (("reason", "overlay"),))] == 1


def test_readiness_survives_a_zookeeper_error(tmp_path):
    """A ConnectionLoss while writing READY (a ZooKeeper member dying) once
    ended the readiness thread for good (bench/chaos.py found it): the
    instance is written on a later round instead."""
    import logging
    import time

    from kazoo.exceptions import ConnectionLoss

    from cowfleet.agents.compute.agent import ComputeAgent
    from cowfleet.guest.builder import READY_MARKER

    agent = ComputeAgent.__new__(ComputeAgent)
    agent.stopping, agent.awaiting_lock, agent.awaited = threading.Event(), threading.Lock(), threading.Event()
    agent.consoles, agent.log = tmp_path, logging.getLogger("test")
    agent.awaiting = {"i1": ("g", time.monotonic() + 60)}
    agent.metrics = AgentMetrics(SimpleNamespace(name="n", role="compute", rack="r", leading=threading.Event(),
                                                 connected=threading.Event(), losses=0, capacity=dict,
                                                 allocated=dict))
    (tmp_path / "i1.log").write_text(READY_MARKER + "\n")
    written = []

    def set_state(group, iid, state, message="", **fields):
        written.append(state)
        if len(written) == 1:
            raise ConnectionLoss()
    agent._set_state = set_state
    loop = threading.Thread(target=agent._readiness_loop, daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while agent.awaiting and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not agent.awaiting and written == ["ready", "ready"], written
        assert loop.is_alive()
    finally:
        agent.stopping.set()
        agent.awaited.set()
        loop.join(5)


def test_a_ready_timeout_counts_a_failure_only_for_an_instance_it_failed(tmp_path, monkeypatch):
    """A guest past its ready_timeout is failed and counted once; one that
    is no longer running when the timeout comes (deleted meanwhile) is
    dropped from the watch without a ``not-ready`` failure."""
    import logging
    import time

    from cowfleet.agents.compute import agent as agent_module
    from cowfleet.agents.compute.agent import ComputeAgent
    from cowfleet.models import Instance, InstanceState

    agent = ComputeAgent.__new__(ComputeAgent)
    agent.awaiting_lock, agent.consoles, agent.log = threading.Lock(), tmp_path, logging.getLogger("test")
    agent.name, agent.zk = "n", None
    agent.metrics = AgentMetrics(SimpleNamespace(name="n", role="compute", rack="r", leading=threading.Event(),
                                                 connected=threading.Event(), losses=0, capacity=dict,
                                                 allocated=dict))
    destroyed, written = [], []
    agent.hyper = SimpleNamespace(destroy=destroyed.append, name_of=domain_name)
    agent._set_state = lambda group, iid, state, *a, **k: written.append((iid, state))
    records = {"running": Instance(id="running", group="g", node="n", rack="r", image="i", flavor="f", generation=1,
                                    state=InstanceState.RUNNING)}
    monkeypatch.setattr(agent_module, "read", lambda zk, path, cls: (
        (records[path.rsplit("/", 1)[-1]], None) if path.rsplit("/", 1)[-1] in records and cls is Instance else None))
    past = time.time() - 1
    agent.awaiting = {"running": ("g", past), "deleted": ("g", past)}
    agent._readiness_round(dict(agent.awaiting))
    assert not agent.awaiting
    assert written == [("running", InstanceState.FAILED)] and len(destroyed) == 1
    assert _samples(agent.metrics)[("cowfleet_agent_failures_total", (("reason", "not-ready"),))] == 1
