"""A closed cluster (issue 16 item 3): the session lab runs with a cluster
secret; without it nobody reads or writes its znodes or gets an agent's P2P
endpoints to deploy, offer (reserve) or hand out image data."""
from __future__ import annotations

import hashlib
import json
import secrets
import time

import pytest
import requests
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE

from cowfleet import p2p, signing
from cowfleet.config import cluster_secret
from cowfleet.models import NodeInfo
from cowfleet.protocol import P2P, ProblemType
from cowfleet.zk import layout
from cowfleet.zk.connection import connect, read_children, split_chroot
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def agent(zk, role: str) -> NodeInfo:
    return next(n for n, _ in read_children(zk, layout.NODES, NodeInfo) if n.role == role)


@pytest.fixture
def stranger(lab):
    """A ZooKeeper session of someone on the network without the secret."""
    zk = KazooClient(hosts=lab.state.zk, timeout=10)
    zk.start(10)
    yield zk
    zk.stop()
    zk.close()


def test_zookeeper_without_the_secret_reads_and_writes_nothing(lab, zk, stranger):
    node = agent(zk, "compute")
    my_acl = set(zk.get_acls(layout.NODES)[0])
    assert [a.id.scheme for a in my_acl] == ["digest"] and [a.perms for a in my_acl] == [31]
    # what the service, the agents and kazoo's recipes made: all closed
    election = zk.get_children(layout.RACKS)
    for path in [layout.ROOT, *layout.TOP_LEVEL, layout.node(node.name), layout.flavor("small"),
                 f"{layout.RACKS}/{election[0]}"]:
        assert set(zk.get_acls(path)[0]) == my_acl, path
    for attempt in (lambda: stranger.get_children(layout.NODES),
                    lambda: stranger.get(layout.node(node.name)),
                    lambda: stranger.get(layout.flavor("small")),
                    lambda: stranger.set(layout.flavor("small"), b'{"vcpus": 64}'),
                    lambda: stranger.create(layout.group("intruder"), b"{}"),
                    lambda: stranger.create(f"{layout.REQUESTS}/r-", b"{}", sequence=True),
                    lambda: stranger.delete(layout.node(node.name)),
                    lambda: stranger.set_acls(layout.NODES, OPEN_ACL_UNSAFE)):
        with pytest.raises(NoAuthError):
            attempt()
    # nor the chroot above it
    servers, chroot = split_chroot(lab.state.zk)
    root = KazooClient(hosts=servers, timeout=10)
    root.start(10)
    try:
        with pytest.raises(NoAuthError):
            root.get_children(chroot)
        with pytest.raises(NoAuthError):
            root.create(f"{chroot}/cowfleet-2", b"")
    finally:
        root.stop()
        root.close()
    assert zk.exists(layout.group("intruder")) is None


def test_an_open_tree_is_closed_on_upgrade(lab):
    """Znodes made before the cluster had a secret are closed by the first
    session with it; from then on a session without it is refused."""
    servers, _ = split_chroot(lab.state.zk)
    hosts = f"{servers}/upgrade-{secrets.token_hex(3)}"
    old = connect(hosts, secret=None)
    try:
        old.create(layout.group("web"), b"{}")
        old.create(f"{layout.group('web')}/i-1", b"{}")
        old.create(layout.node("n1"), b"{}", ephemeral=True)
        assert old.get_acls(layout.group("web"))[0][0].id.scheme == "world"
        new = connect(hosts)
        try:
            for path in (layout.ROOT, layout.GROUPS, layout.group("web"), f"{layout.group('web')}/i-1",
                         layout.node("n1")):
                assert new.get_acls(path)[0] == new.default_acl, path
            assert new.get(layout.group("web"))[0] == b"{}"
            with pytest.raises(NoAuthError):
                old.get(layout.group("web"))
            with pytest.raises(NoAuthError, match="has no secret"):
                connect(hosts, secret=None).stop()       # a program still without it cannot start
            with pytest.raises(NoAuthError, match="has another secret"):
                connect(hosts, secret=b"another cluster's secret 0123456").stop()
        finally:
            new.delete(layout.ROOT, recursive=True)
            new.stop()
            new.close()
    finally:
        old.stop()
        old.close()
    boot = connect(servers)            # the chroot itself (closed too, so with the secret)
    try:
        boot.delete(split_chroot(hosts)[1], recursive=True)
    finally:
        boot.stop()
        boot.close()


def _unsigned(method, url, **kw):
    return requests.request(method, url, timeout=10, **kw)


def _signed_by(secret: bytes, method: str, url: str, now: float | None = None, **kw):
    """A request signed with ``secret`` at ``now`` (requests' auth hook, as p2p's session)."""
    def auth(r):
        split = requests.utils.urlparse(r.url)
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode()
        r.headers.update(signing.sign_headers(signing.p2p_key(secret), r.method,
                                              signing.canonical_path(split.path, split.query),
                                              hashlib.sha256(body).hexdigest(), now=now))
        return r
    return requests.request(method, url, auth=auth, timeout=10, **kw)


def _refused(resp, status: int):
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.json()["type"] == (ProblemType.UNAUTHORIZED if status == 401 else ProblemType.FORBIDDEN)


def test_p2p_refuses_unsigned_stale_tampered_and_foreign_requests(lab, zk, client, tmp_path):
    compute, storage = agent(zk, "compute"), agent(zk, "storage")
    leader = compute                      # the one-node lab: its compute agent leads its rack
    request = f"closed-{secrets.token_hex(3)}"
    offer = {"flavor": {"name": "small", "vcpus": 1, "memory_mib": 128, "disk_gib": 1}, "request": request,
             "want": 1, "group": ""}
    client.put_image("closed-data", format="raw", min_replicas=1)
    try:
        client.upload_image("closed-data", _blob(tmp_path))
        data = f"{storage.address}/v1/images/closed-data/data"
        calls = [("POST", compute.address + P2P.OFFER, offer),
                 ("POST", leader.address + P2P.RACK_OFFERS, offer),
                 ("POST", leader.address + P2P.DEPLOY, {"request": "not-a-request"}),   # signed: a 400, nothing runs
                 ("POST", storage.address + P2P.LOCATE, {"image": "closed-data", "rack": storage.rack}),
                 ("GET", data, None),
                 ("PUT", data, None)]
        secret = cluster_secret()
        for method, url, body in calls:
            kw = {"json": body} if body is not None else {"data": b"x" * 1024} if method == "PUT" else {}
            _refused(_unsigned(method, url, **kw), 401)
            _refused(_signed_by(b"another cluster's secret 0123456", method, url, **kw), 403)
            _refused(_signed_by(secret, method, url, now=time.time() - 120, **kw), 403)     # stale
            _refused(_signed_by(secret, method, url, now=time.time() + 120, **kw), 403)     # from the future
            if body is not None:          # signed, then altered on the way
                prep = p2p.session().prepare_request(requests.Request(method, url, json=body))
                prep.body = json.dumps(dict(body, request="9999999999")).encode()
                prep.headers["Content-Length"] = str(len(prep.body))
                _refused(p2p.session().send(prep, timeout=10), 403)
                replay = p2p.session().prepare_request(requests.Request(method, url, json=body))
                first = p2p.session().send(replay.copy(), timeout=10)
                assert first.status_code not in (401, 403), first.text
                _refused(p2p.session().send(replay, timeout=10), 403)                    # the same again
        # the signed ones work: the data, and the offer (then released)
        got = p2p.session().get(data, timeout=10)
        assert got.status_code == 200 and got.content == _blob(tmp_path).read_bytes()
        assert p2p.post(compute.address, P2P.OFFER, dict(offer, request=request + "-ok"))["count"] >= 0
        p2p.post(compute.address, P2P.RELEASE, {"request": request + "-ok"})
        p2p.post(compute.address, P2P.RELEASE, {"request": request})
        # open: health and metrics, for probes and Prometheus
        assert _unsigned("GET", compute.address + "/healthz").status_code == 200
        assert _unsigned("GET", storage.address + "/metrics").status_code == 200
        # the refusals were counted, by path and status
        metrics = _unsigned("GET", compute.address + "/metrics").text
        assert 'route="/v1/offer",status="401"' in metrics
    finally:
        client.delete_image("closed-data")
    wait_until(lambda: client.get_image("closed-data") is None, 60, "the image deleted")


def _blob(tmp_path):
    path = tmp_path / "closed.raw"
    if not path.exists():
        path.write_bytes(b"closed cluster\n" * 70000)
    return path
