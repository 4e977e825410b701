"""The pure parts of the streaming data path: tgtadm output, target naming,
the choice of copiers, qcow2 headers and session keys."""
from __future__ import annotations

import subprocess


from cowfleet.agents.compute.sessions import SessionManager, nbd_url, qcow2_backing, session_key
from cowfleet.agents.storage import tgt
from cowfleet.agents.storage.replication import copiers
from cowfleet.models import NodeInfo, Replica

SHOW = """Target 1: iqn.2026-11.org.cowfleet:lab1-storage-1:demo-0123456789ab
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2008-11.org.linux-kvm: alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Backing store type: null
            Backing store path: None
        LUN: 1
            Type: disk
            Readonly: Yes
            Backing store type: rdwr
            Backing store path: /var/lib/cowfleet/lab1-storage-1/images/demo.img
    Account information:
    ACL information:
        ALL
Target 3: iqn.2001-04.com.example:other
    System information:
    LUN information:
        LUN: 0
            Backing store path: None
"""


def test_parse_targets():
    ts = tgt.parse_targets(SHOW)
    assert [(t.tid, t.iqn) for t in ts] == [(1, "iqn.2026-11.org.cowfleet:lab1-storage-1:demo-0123456789ab"),
                                            (3, "iqn.2001-04.com.example:other")]
    assert ts[0].backing == ["/var/lib/cowfleet/lab1-storage-1/images/demo.img"] and ts[0].sessions == 1
    assert ts[1].backing == [] and ts[1].sessions == 0


def test_iqn_names_its_owner_and_content():
    iqn = tgt.iqn_for("node-1", "demo", "ab" * 32)
    assert iqn == "iqn.2026-11.org.cowfleet:node-1:demo-abababababab"
    assert iqn.startswith(tgt.node_prefix("node-1"))
    assert not iqn.startswith(tgt.node_prefix("node-"))      # no node's prefix covers another's


def _node(name, rack):
    return NodeInfo(name=name, role="storage", rack=rack)


def _replica(node, rack):
    return Replica(node=node, rack=rack, path="/x", sha256="0" * 64, size_bytes=1)


def test_copiers_prefer_racks_without_a_copy():
    storage = [_node("a1", "a"), _node("a2", "a"), _node("b1", "b"), _node("c1", "c")]
    chosen = copiers("img", 2, [_replica("a1", "a")], storage)
    assert len(chosen) == 1 and chosen[0] in ("b1", "c1")
    chosen = copiers("img", 3, [_replica("a1", "a")], storage)
    assert sorted(chosen) == ["b1", "c1"]
    # one rack only: another node of it
    assert copiers("img", 2, [_replica("a1", "a")], storage[:2]) == ["a2"]
    # enough copies: nobody
    assert copiers("img", 1, [_replica("a1", "a")], storage) == []
    # the same answer whoever computes it (every agent decides alone)
    assert copiers("img", 2, [], storage) == copiers("img", 2, [], list(reversed(storage)))


def test_session_key_from_an_overlay_header(tmp_path):
    mgr = SessionManager(tmp_path / "sessions")
    key = session_key("demo", "f" * 64)
    url = nbd_url(str(mgr.socket(key)), key)     # no link made: the header alone names the session
    overlay = tmp_path / "o.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", url, str(overlay),
                    "64M"], check=True)
    assert qcow2_backing(overlay) == url
    assert mgr.key_of_overlay(overlay) == key == "demo-ffffffffffff"
    assert mgr.key_of_backing("nbd+unix:///img?socket=/elsewhere/k/nbd.sock") is None
    assert mgr.key_of_backing(f"nbd+unix:///{key}?socket=/run/cowfleet/sessions/0123456789abcdef/nbd.sock") is None
    assert mgr.key_of_backing("/var/lib/master.img") is None
    plain = tmp_path / "p.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(plain), "1M"], check=True)
    assert qcow2_backing(plain) is None and qcow2_backing(tmp_path / "missing") is None
    assert mgr.list() == {}
