"""A storage agent on the fake exporter (what the racks lab's ``--fake``
runs): with no tgtd anywhere it copies, exports, publishes, answers P2P
(holds, locate, data) and withdraws its replicas while its exporter is
dead, as one on tgtd does. A real ZooKeeper of this module's own and the
agent in-process (its rooms wired as in production)."""
from __future__ import annotations

import hashlib
import os
import secrets
import threading

import pytest

from cowfleet import p2p
from cowfleet.agents.storage.agent import StorageAgent
from cowfleet.agents.storage.exporter import FakeExporter, iqn_for
from cowfleet.lab import components as c
from cowfleet.models import Image, NodeInfo, Replica
from cowfleet.zk import layout
from cowfleet.zk.connection import connect, read
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

PORTAL = "192.0.2.1:3260"       # nothing attaches: any portal is recorded as given


@pytest.fixture(scope="module")
def zk_hosts(module_dir):
    server = c.ZooKeeperServer(module_dir / "zk")
    server.start()
    try:
        yield server.hosts + "/fake-exporter"
    finally:
        server.stop()


@pytest.fixture
def zk(zk_hosts):
    client = connect(zk_hosts)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def agent(zk_hosts, module_dir):
    name = f"fakest-{secrets.token_hex(3)}"
    a = StorageAgent(name=name, rack="rack-a", zk_hosts=zk_hosts, state_dir=str(module_dir / name),
                     portal=PORTAL, exporter=FakeExporter(name))
    thread = threading.Thread(target=a.run, name=f"agent-{name}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: a.address and a.leading.is_set(), 30, "the agent registered and leading its rack")
        yield a
    finally:
        a.request_stop()
        thread.join(30)
        assert not thread.is_alive()


def _image(zk, name: str, **kw) -> Image:
    image = Image(name=name, format="raw", min_replicas=1, **kw)
    zk.create(layout.image(name), image.to_bytes())
    zk.create(layout.image_replicas(name))          # as the service makes it
    return image


def _delete_image(zk, name: str) -> None:
    zk.delete(layout.image(name), recursive=True)


def _member(zk, agent) -> NodeInfo:
    return read(zk, layout.node(agent.name), NodeInfo)[0]


def test_a_copy_is_exported_published_and_served(zk, agent, module_dir):
    data = os.urandom(1 << 20) + bytes(1 << 20)
    sha = hashlib.sha256(data).hexdigest()
    src = module_dir / "src.raw"
    src.write_bytes(data)
    _image(zk, "fk", source_url=f"file://{src}")
    try:
        replica = wait_until(lambda: (r := read(zk, layout.image_replica("fk", agent.name), Replica)) and r[0],
                             30, "the replica record")
        target = iqn_for(agent.name, "fk", sha)
        assert (replica.portal, replica.target, replica.sha256, replica.size_bytes, replica.rack) == \
            (PORTAL, target, sha, len(data), "rack-a")
        assert agent.exporter.list() == {target: [replica.path]}
        assert read(zk, layout.image("fk"), Image)[0].sha256 == sha
        holds = p2p.session().post(f"{agent.address}/v1/holds", json={"image": "fk"}, timeout=10).json()
        assert holds == {"node": agent.name, "rack": "rack-a", "holds": True, "portal": PORTAL,
                         "target": target, "sha256": sha, "size_bytes": len(data)}
        where = p2p.session().post(f"{agent.address}/v1/locate", json={"image": "fk", "rack": "rack-a"}, timeout=10)
        assert where.status_code == 200
        assert [(r["node"], r["target"]) for r in where.json()["replicas"]] == [(agent.name, target)]
        got = p2p.session().get(f"{agent.address}/v1/images/fk/data", timeout=10)
        assert got.status_code == 200 and got.content == data
        for method, path, status in (("HEAD", "/v1/images/fk/data", 405), ("POST", "/v1/images/fk/data", 405),
                                     ("GET", "/v1/images/nope/data", 404), ("GET", "/v1/images/fk/data/", 404)):
            resp = p2p.session().request(method, f"{agent.address}{path}", timeout=10)
            assert resp.status_code == status, (method, path)
            assert resp.headers["Content-Type"] == "application/problem+json"
    finally:
        _delete_image(zk, "fk")
    wait_until(lambda: agent.exporter.list() == {} and not agent.copies.path("fk").exists(), 30,
               "the deleted image's copy discarded and unexported")


def test_an_upload_lands_and_a_mismatch_is_refused(zk, agent):
    _image(zk, "up")
    try:
        blob = os.urandom(1 << 20)
        url = f"{agent.address}/v1/images/up/data"
        bad = p2p.session().put(url, data=blob, headers={"X-Checksum-Sha256": "0" * 64}, timeout=30)
        assert bad.status_code == 422 and "checksum mismatch" in bad.json()["detail"]
        ok = p2p.session().put(url, data=blob, timeout=30)
        assert ok.status_code == 200
        assert ok.json() == {"node": agent.name, "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob)}
        wait_until(lambda: zk.exists(layout.image_replica("up", agent.name)), 30, "the uploaded copy published")
    finally:
        _delete_image(zk, "up")


def test_a_dead_exporter_withdraws_the_replicas_until_it_answers(zk, agent, module_dir):
    src = module_dir / "w.raw"
    src.write_bytes(os.urandom(1 << 20))
    _image(zk, "wd", source_url=f"file://{src}")
    try:
        wait_until(lambda: zk.exists(layout.image_replica("wd", agent.name)), 30, "the replica record")
        agent.exporter.machine.stop()                      # a tgtd dying takes its targets along
        wait_until(lambda: not zk.exists(layout.image_replica("wd", agent.name)), 30, "the replica withdrawn")
        assert _member(zk, agent).healthy is False
        agent.exporter.machine.start()
        agent.wake.set()
        wait_until(lambda: zk.exists(layout.image_replica("wd", agent.name)), 30, "published again")
        assert _member(zk, agent).healthy is True
        target = read(zk, layout.image_replica("wd", agent.name), Replica)[0].target
        assert list(agent.exporter.list()) == [target]      # exported again, once
    finally:
        _delete_image(zk, "wd")
