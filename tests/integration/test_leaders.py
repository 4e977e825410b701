"""Leadership as every component reads it (cowfleet/zk/leaders.py), against
a real ZooKeeper and real kazoo Elections: the first contender leads, a
leader that leaves hands over to the next, and reading writes nothing."""
from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import asdict

import pytest

from cowfleet.agents import handshake
from cowfleet.agents.handshake import HandshakeGatherer
from cowfleet.agents.p2p_server import P2PServer
from cowfleet.lab import components as c
from cowfleet.models import DEFAULT_FLAVORS, NodeInfo
from cowfleet.protocol import P2P, NodeOffer, Trace
from cowfleet.zk import layout
from cowfleet.zk.connection import connect
from cowfleet.zk.leaders import leader_names, rack_leader_name, rack_leaders
from tests.conftest import _workdir
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def zk():
    d = _workdir("cowfleet-leaders-")
    server = c.ZooKeeperServer(d / "zk")
    clients = []
    try:
        server.start()
        client = connect(server.hosts + "/leaders-test")
        clients.append(client)
        yield client, clients, server.hosts + "/leaders-test"
    finally:
        for cl in clients:
            cl.stop()
            cl.close()
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


class Contender:
    """A node's session that registers and runs for its rack's leadership,
    as agents/node.py does."""

    def __init__(self, hosts: str, clients: list, name: str, rack: str, role: str = "compute",
                 address: str | None = None):
        self.zk = connect(hosts)
        clients.append(self.zk)
        self.name, self.rack = name, rack
        info = NodeInfo(name=name, role=role, rack=rack, address=address or f"http://127.0.0.1:1/{name}")
        self.zk.ensure_path(layout.NODES)
        self.zk.create(layout.node(name), info.to_bytes(), ephemeral=True)
        self.leading = threading.Event()
        self.release = threading.Event()
        self.election = self.zk.Election(layout.rack_leader(rack, role), identifier=name)
        self.thread = threading.Thread(target=self.election.run, args=(self._lead,), daemon=True)
        self.thread.start()

    def _lead(self):
        self.leading.set()
        self.release.wait()

    def leave(self):
        """Step down (the lock goes), then end the session."""
        self.release.set()
        if not self.leading.is_set():
            self.election.cancel()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.zk.stop()


def test_the_first_contender_leads_and_hands_over(zk):
    client, clients, hosts = zk
    a1 = Contender(hosts, clients, "a1", "rack-a")
    assert a1.leading.wait(10)
    a2 = Contender(hosts, clients, "a2", "rack-a")
    b1 = Contender(hosts, clients, "b1", "rack-b")
    assert b1.leading.wait(10)
    wait_until(lambda: len(client.get_children(layout.rack_leader("rack-a", "compute"))) == 2, 10,
               "a2 contends")
    assert rack_leader_name(client, "rack-a", "compute") == "a1"
    assert leader_names(client) == {"a1", "b1"}
    assert {r: n.name for r, n in rack_leaders(client, "compute").items()} == {"rack-a": "a1", "rack-b": "b1"}
    assert rack_leaders(client, "storage") == {}
    # only the racks asked for (a compute agent asks its storage nodes' racks)
    assert {r: n.name for r, n in rack_leaders(client, "compute", ["rack-b", "rack-none"]).items()} == \
        {"rack-b": "b1"}
    assert rack_leaders(client, "compute", []) == {}

    a1.leave()
    assert a2.leading.wait(10)
    wait_until(lambda: rack_leader_name(client, "rack-a", "compute") == "a2", 10, "a2 leads rack-a")
    assert leader_names(client) == {"a2", "b1"}
    assert rack_leaders(client, "compute")["rack-a"].name == "a2"
    a2.leave()
    b1.leave()


def test_reading_a_rack_without_contenders_writes_nothing(zk):
    client, _, _ = zk
    client.ensure_path(layout.RACKS + "/rack-empty")
    assert rack_leader_name(client, "rack-empty", "storage") is None
    assert not client.exists(layout.rack_leader("rack-empty", "storage"))
    assert "rack-empty" not in rack_leaders(client, "storage")


def test_a_coordinator_keeps_the_rack_leaders_and_rereads_a_rack_whose_leader_changed(zk, monkeypatch):
    client, clients, hosts = zk
    servers, bodies = {}, []

    def leader_endpoint(name: str, rack: str) -> str:
        """A rack leader's P2P endpoint answering offers for itself alone."""
        srv = P2PServer(logging.getLogger("test"))
        offer = asdict(NodeOffer(node=name, rack=rack, count=1, version=0))
        srv.json_route(P2P.RACK_OFFERS, lambda body: bodies.append(body) or (
            200, {"rack": rack, "leader": name, "offers": [offer], "errors": {}}))
        servers[name] = srv
        return srv.serve("127.0.0.1:0")
    c1 = Contender(hosts, clients, "c1", "rack-c", address=leader_endpoint("c1", "rack-c"))
    assert c1.leading.wait(10)
    c2 = Contender(hosts, clients, "c2", "rack-c", address=leader_endpoint("c2", "rack-c"))
    d1 = Contender(hosts, clients, "d1", "rack-d", address=leader_endpoint("d1", "rack-d"))
    assert d1.leading.wait(10)
    wait_until(lambda: len(client.get_children(layout.rack_leader("rack-c", "compute"))) == 2, 10,
               "c2 contends")
    reads = []
    real = handshake.rack_leaders

    def counted(zk_, role, racks=None):
        reads.append(racks)
        return real(zk_, role, racks)
    monkeypatch.setattr(handshake, "rack_leaders", counted)
    racks = {"rack-c", "rack-d"}                   # the racks of the compute nodes, as the agent's directory says
    gatherer = HandshakeGatherer("coordinator", racks=lambda: set(racks))

    def ask(stale_nodes=()):
        trace = Trace(request="req-1", group="g", coordinator="coordinator", want=2, stale_nodes=list(stale_nodes))
        offers = gatherer.offers(client, "req-1", "g", DEFAULT_FLAVORS[0], 2, trace)
        return {o.node for o in offers}, trace
    try:
        assert ask()[0] == {"c1", "d1"}
        assert reads == [None]                        # every rack's leader, once
        assert not any(b["fresh"] for b in bodies)
        bodies.clear()
        ask(stale_nodes=["c1"])                       # a retry after a lost commit on c1's folder guard
        assert len(bodies) == 2 and all(b["fresh"] == ["c1"] for b in bodies)
        got, trace = ask()
        assert got == {"c1", "d1"} and reads == [None]    # kept
        # c1 steps down and c2 leads rack-c: the kept c1 does not answer, so
        # that rack alone is read anew, c2 asked in the same round and kept
        servers["c1"].shutdown()
        c1.leave()
        assert c2.leading.wait(10)
        got, trace = ask()
        assert got == {"c2", "d1"}
        assert trace.racks["rack-c"]["leader"] == "c2" and "error" not in trace.racks["rack-c"]
        assert reads == [None, ["rack-c"]]
        assert ask()[0] == {"c2", "d1"} and reads == [None, ["rack-c"]]
        # a leader that still leads and does not answer is not asked twice,
        # and costs the other racks nothing
        servers["d1"].shutdown()
        got, trace = ask()
        assert got == {"c2"} and "error" in trace.racks["rack-d"]
        assert reads == [None, ["rack-c"], ["rack-d"]]
        # a rack new to the directory, without a kept leader: read on every
        # round until it has one, then kept with the others
        racks.add("rack-e")
        n = len(reads)
        assert ask()[0] == {"c2"} and reads[n:] == [["rack-e"], ["rack-d"]]    # d1 still fails, once
        e1 = Contender(hosts, clients, "e1", "rack-e", address=leader_endpoint("e1", "rack-e"))
        assert e1.leading.wait(10)
        n = len(reads)
        assert ask()[0] == {"c2", "e1"} and reads[n:] == [["rack-e"], ["rack-d"]]
        n = len(reads)
        assert ask()[0] == {"c2", "e1"} and reads[n:] == [["rack-d"]]           # e1 kept now
        # a membership change (the agent's peer directory tells it): all read again
        gatherer.forget_leaders()
        n = len(reads)
        ask()
        assert reads[n] is None
        # a read that a membership change overtook is used, not kept
        gatherer.forget_leaders()

        def overtaken(zk_, role, racks_=None):
            got = counted(zk_, role, racks_)
            if racks_ is None:
                gatherer.forget_leaders()
            return got
        monkeypatch.setattr(handshake, "rack_leaders", overtaken)
        assert ask()[0] == {"c2", "e1"}
        m = len(reads)
        ask()
        assert reads[m] is None, "the overtaken read was kept"
        e1.leave()
    finally:
        for srv in servers.values():
            srv.shutdown()
        c2.leave()
        d1.leave()

