"""The agents' directory of peers (agents/handshake.PeerDirectory) against a
real ZooKeeper: it follows joins and leaves, a burst of joins costs a few
reads of the member list rather than one per join in every agent (the
start-up storm that kept 500 fake agents from registering), and it follows
the cluster again after its session expired."""
from __future__ import annotations

import threading
import time

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss

from cowfleet.agents.handshake import PeerDirectory
from cowfleet.agents.node import NodeAgent
from cowfleet.models import NodeInfo
from cowfleet.zk import layout
from cowfleet.zk.connection import connect
from tests.conftest import zookeeper_alone
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

INTERVAL = 0.5


@pytest.fixture
def clients(zk_hosts):
    made = []

    def make(chroot: str):
        cl = connect(zk_hosts + chroot)
        made.append(cl)
        return cl
    yield make
    for cl in made:
        cl.stop()
        cl.close()


def join(zk, name: str, rack: str = "r1", role: str = "compute"):
    info = NodeInfo(name=name, role=role, rack=rack, address=f"http://127.0.0.1:1/{name}")
    zk.create(layout.node(name), info.to_bytes(), ephemeral=True, makepath=True)


def names(directory, role="compute", rack=None):
    return {n.name for n in directory.nodes(role, rack)}


def test_a_burst_of_joins_costs_a_few_reads_not_one_per_join(clients):
    members, zk = clients("/burst"), clients("/burst")
    zk.ensure_path(layout.NODES)
    changes = []
    directory = PeerDirectory(zk, on_change=changes.append, min_interval=INTERVAL)
    try:
        assert names(directory) == set() and directory.reads == 1
        t0 = time.monotonic()
        for i in range(200):
            join(members, f"n{i:03d}", rack=f"r{i % 4}")
        wait_until(lambda: len(names(directory)) == 200, 30, "200 peers")
        elapsed = time.monotonic() - t0
        # kazoo's ChildrenWatch reads the list once per join: 200 here
        assert directory.reads <= 2 + elapsed / INTERVAL + 1, (directory.reads, elapsed)
        assert directory.reads < 50
        assert names(directory, rack="r1") == {f"n{i:03d}" for i in range(1, 200, 4)}
        assert names(directory, role="storage") == set()
        wait_until(lambda: changes and len(changes[-1]) == 200, 10, "on_change told of 200")
        # told at most once an interval: a loop it wakes asks again, and
        # telling on every join made it read on every join
        assert len(changes) <= 2 + (time.monotonic() - t0) / INTERVAL, len(changes)
        for i in range(0, 200, 2):
            members.delete(layout.node(f"n{i:03d}"))
        wait_until(lambda: names(directory) == {f"n{i:03d}" for i in range(1, 200, 2)}, 30, "100 left")
    finally:
        directory.close()


def test_follows_the_cluster_after_its_session_expired(clients, zk_hosts):
    members, zk = clients("/expiry"), clients("/expiry")
    zk.ensure_path(layout.NODES)
    join(members, "before")
    directory = PeerDirectory(zk, min_interval=INTERVAL)
    try:
        assert names(directory) == {"before"}
        session, password = zk.client_id
        lost = threading.Event()
        zk.add_listener(lambda state: lost.set() if state == "LOST" else None)
        # a second client on the same session, closed: ZooKeeper expires it
        twin = KazooClient(hosts=zk_hosts + "/expiry", client_id=(session, password))
        twin.start()
        twin.stop()
        twin.close()
        wait_until(lost.is_set, 30, "the directory's session expired")
        wait_until(lambda: zk.connected and zk.client_id[0] != session, 30, "a new session")
        join(members, "after")
        wait_until(lambda: names(directory) == {"before", "after"}, 30, "a join after the expiry")
        members.delete(layout.node("before"))
        wait_until(lambda: names(directory) == {"after"}, 30, "a leave after the expiry")
    finally:
        directory.close()


def test_close_stops_its_thread(clients):
    zk = clients("/close")
    zk.ensure_path(layout.NODES)
    directory = PeerDirectory(zk, min_interval=INTERVAL)
    assert directory.thread.is_alive()
    directory.close()
    wait_until(lambda: not directory.thread.is_alive(), 10, "the directory's thread gone")


def test_agents_sharing_a_session_share_one_directory(clients):
    """agents/fleet.py --shared-session: 20 agents on one client read the
    list and the records once, not 20 times; each hears of changes until it
    gives the directory back, and the last one closes it."""
    members, zk = clients("/shared"), clients("/shared")
    zk.ensure_path(layout.NODES)
    first, second = [], []
    a = PeerDirectory.shared(zk, on_change=first.append, min_interval=INTERVAL)
    b = PeerDirectory.shared(zk, on_change=second.append, min_interval=INTERVAL)
    assert a is b
    join(members, "x")
    wait_until(lambda: first and second and first[-1] == second[-1] == ["x"], 10, "both told")
    b.release(second.append)
    told = len(second)
    join(members, "y")
    wait_until(lambda: first[-1] == ["x", "y"], 10, "the first told of y")
    assert len(second) == told and a.thread.is_alive()
    a.release(first.append)
    wait_until(lambda: not a.thread.is_alive(), 10, "closed by its last user")
    c = PeerDirectory.shared(zk, min_interval=INTERVAL)
    try:
        assert c is not a and names(c) == {"x", "y"}
    finally:
        c.release()


def test_asks_are_answered_from_the_names_known_while_disconnected():
    """kazoo queues a request while it reconnects, and a plain read waits as
    long: the offers, releases and the agent's own loop must not."""
    with zookeeper_alone("cowfleet-peers-gone-") as zk_server:
        zk = connect(zk_server.hosts + "/gone")
        directory = None
        try:
            zk.ensure_path(layout.NODES)
            join(zk, "a")
            directory = PeerDirectory(zk, min_interval=INTERVAL)
            assert names(directory) == {"a"}
            zk_server.stop()
            wait_until(lambda: not zk.connected, 30, "the client disconnected")
            answered = []
            asker = threading.Thread(target=lambda: answered.append(names(directory)), daemon=True)
            asker.start()
            asker.join(5)
            assert answered == [{"a"}], "an ask waited for the connection"
        finally:
            if directory is not None:
                directory.close()
            zk.stop()
            zk.close()


def test_an_agent_whose_connection_drops_while_it_registers_registers_once_connected(clients, tmp_path):
    """At 1,000 fake agents on 2 cores, 14 agents' first registration got a
    ConnectionLoss (their process starved, its client missing its pings):
    it ended their threads for good, their processes running."""
    zk = clients("/startup")
    zk.ensure_path(layout.NODES)

    class Member(NodeAgent):
        role = "compute"

        def reconcile(self):
            pass
    agent = Member("a1", "r1", zk_hosts="", state_dir=str(tmp_path), zk=zk)
    create, failed = zk.create, []

    def create_once_lost(path, *args, **kwargs):
        if path == layout.node("a1") and not failed:
            failed.append(path)
            raise ConnectionLoss()
        return create(path, *args, **kwargs)
    zk.create = create_once_lost
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: zk.exists(layout.node("a1")), 15, "registered after the failed try")
        assert failed and runner.is_alive()
    finally:
        agent.request_stop()
        runner.join(10)
