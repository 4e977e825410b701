"""OS streaming (issue 5): masters exported read-only over iSCSI by tgtd,
opened once per compute host by qemu-storage-daemon, exported on a local NBD
socket that every overlay is backed by. Real tgtd, qemu-storage-daemon,
libvirt, ZooKeeper and agents; several storage agents share this machine's
tgtd, each touching only its own targets."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import libvirt
import pytest

from cowfleet.agents.compute.hypervisor import domain_name
from cowfleet.agents.compute.sessions import SessionManager, daemons_under, nbd_url, session_dir_of
from cowfleet.agents.storage import tgt
from cowfleet.client import ApiError
from cowfleet.lab import components as c
from cowfleet.models import Replica
from cowfleet.procs import cmdline
from cowfleet.zk import layout
from cowfleet.zk.connection import read
from tests.conftest import _workdir
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def node_dir(lab, role: str) -> Path:
    return lab.dir / "nodes" / f"{lab.state.lab_id}-{role}-1"


def backing_chain(overlay: Path) -> list[dict]:
    return json.loads(subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", "--backing-chain", str(overlay)],
        check=True, capture_output=True, text=True).stdout)


def running(client, name: str, n: int) -> bool:
    g = client.get_group(name)
    return g is not None and len(g["instances"]) == n and all(
        i["state"] in ("running", "ready") for i in g["instances"])


def delete_group(client, name: str) -> None:
    client.delete_group(name)
    wait_until(lambda: client.get_group(name) is None, 120, f"group {name} gone")


def held_targets(zk, node: str) -> set[str]:
    """The targets of the replicas ``node`` publishes, of every image."""
    out = set()
    for image in zk.get_children(layout.IMAGES):
        got = read(zk, layout.image_replica(image, node), Replica)
        if got is not None:
            out.add(got[0].target)
    return out


def demo_replica(zk, lab) -> Replica:
    return read(zk, layout.image_replica("demo", f"{lab.state.lab_id}-storage-1"), Replica)[0]


def test_instances_of_an_image_share_one_session_on_the_iscsi_lun(lab, client, zk, image_demo):
    compute, storage = node_dir(lab, "compute"), node_dir(lab, "storage")
    sessions = compute / "sessions"
    replica = demo_replica(zk, lab)
    assert replica.portal == "127.0.0.1:3260"
    assert replica.target == tgt.iqn_for(storage.name, "demo", image_demo["sha256"])
    # the master is a read-only LUN of this node's target, once
    mine = [t for t in tgt.list_targets(tgt.node_prefix(storage.name)) if t.iqn == replica.target]
    assert len(mine) == 1 and mine[0].backing == [str(storage / "images" / "demo.img")]
    assert "Readonly: Yes" in subprocess.run(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"],
                                             capture_output=True, text=True).stdout

    client.put_group("stream", image="demo", flavor="small", size=2)
    try:
        wait_until(lambda: running(client, "stream", 2), 120, "2 running")
        daemons = daemons_under(sessions)
        assert len(daemons) == 1, daemons
        (pid, cmd), = daemons.items()
        args = " ".join(cmd)
        assert f"target={replica.target}" in args and "portal=127.0.0.1:3260" in args
        assert "read-only=on" in args and "writable=off" in args
        key = f"demo-{image_demo['sha256'][:12]}"
        sock = SessionManager(sessions).socket(key)
        assert sock.resolve().parent == (sessions / key).resolve()      # a short link to its folder
        overlays = sorted((compute / "overlays" / "stream").glob("*.qcow2"))
        assert len(overlays) == 2
        for overlay in overlays:
            chain = backing_chain(overlay)
            assert [layer["format"] for layer in chain] == ["qcow2", "raw"]
            assert chain[0]["backing-filename"] == nbd_url(str(sock), key) == chain[1]["filename"]
        # tgtd sees the daemon's iSCSI session on the target
        t = next(t for t in tgt.list_targets(tgt.node_prefix(storage.name)) if t.iqn == replica.target)
        assert t.sessions >= 1

        # an image in use cannot be deleted
        with pytest.raises(ApiError) as err:
            client.delete_image("demo")
        assert err.value.status == 409

        # a restarted agent adopts the running session (pid file), and the
        # next instance of the image uses it
        lab.restart("agent-compute")
        client.put_group("stream", image="demo", flavor="small", size=3)
        wait_until(lambda: running(client, "stream", 3), 120, "3 running")
        assert list(daemons_under(sessions)) == [pid]
        # scale in to one: the session stays while an instance uses it
        client.put_group("stream", image="demo", flavor="small", size=1)
        wait_until(lambda: len(list((compute / "overlays" / "stream").glob("*.qcow2"))) == 1, 120,
                   "scale-in to 1")
        assert list(daemons_under(sessions)) == [pid]
    finally:
        delete_group(client, "stream")
    # the last instance gone: the session stops, nothing is left
    # (the daemon dies before its folder goes: one condition for both)
    wait_until(lambda: not daemons_under(sessions) and not list(sessions.iterdir()), 30,
               "session stopped and its folder removed")
    assert not c.pid_alive(pid)


def test_persistent_overlays_survive_a_restart_ephemeral_ones_do_not(lab, client, zk, image_demo):
    compute = node_dir(lab, "compute")
    conn = libvirt.open("qemu:///system")
    client.put_group("keep", image="demo", flavor="small", size=1, persistent=True)
    client.put_group("toss", image="demo", flavor="small", size=1)
    try:
        assert client.get_group("keep")["persistent"] is True
        assert client.get_group("toss")["persistent"] is False
        wait_until(lambda: running(client, "keep", 1) and running(client, "toss", 1), 120, "both running")
        before = {}
        for g in ("keep", "toss"):
            inst = client.get_group(g)["instances"][0]
            overlay = compute / "overlays" / g / f"{inst['id']}.qcow2"
            os.setxattr(overlay, "user.cowfleet-test", b"mark")
            before[g] = (inst, overlay)
            # the guest dies (as a crash or power-off would): the agent restarts it
            conn.lookupByName(domain_name(inst["node"], inst["id"])).destroy()

        def restarted(g):
            inst = client.get_group(g)["instances"][0]
            return inst["state"] in ("running", "ready") and inst["running_at"] != before[g][0]["running_at"]
        wait_until(lambda: restarted("keep") and restarted("toss"), 120, "both restarted")
        assert os.getxattr(before["keep"][1], "user.cowfleet-test") == b"mark"   # the same overlay
        with pytest.raises(OSError):
            os.getxattr(before["toss"][1], "user.cowfleet-test")                 # a fresh one
    finally:
        conn.close()
        delete_group(client, "keep")
        delete_group(client, "toss")
    assert not list((compute / "overlays").glob("keep/*")) and not list((compute / "overlays").glob("toss/*"))


def test_attach_uses_the_next_replica_when_the_first_is_unreachable(lab, zk, image_demo):
    d = _workdir("cowfleet-attach-")
    mgr = SessionManager(d / "sessions")
    good = demo_replica(zk, lab).to_dict()
    dead = dict(good, node="gone", portal="127.0.0.1:1")
    try:
        with mgr.lock("x"):
            session = mgr.attach("demo", image_demo["sha256"], "raw", [dead, good])
        assert session.node == good["node"] and session.portal == good["portal"]
        assert list(daemons_under(d)) == [session.pid]
        mgr.stop(session.key)
        assert daemons_under(d) == {}
    finally:
        for pid in daemons_under(d):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)


def test_storage_restart_reexports_without_duplicates_or_leftovers(lab, client, zk, image_demo):
    name = f"{lab.state.lab_id}-storage-1"
    master = node_dir(lab, "storage") / "images" / "demo.img"
    leftover = tgt.iqn_for(name, "no-such-image", "0" * 64)
    tgt.export(leftover, str(master))           # as a crash might leave behind
    try:
        lab.restart("agent-storage")
        wait_until(lambda: leftover not in {t.iqn for t in tgt.list_targets(tgt.node_prefix(name))}, 30,
                   "leftover target removed")
        wait_until(lambda: client.get_image("demo")["status"] == "available", 60, "demo available again")

        # every target of the node is the replica of an image it holds: no leftover
        # (the session lab may hold other tests' images too: theirs are theirs)
        def exported():
            iqns = [t.iqn for t in tgt.list_targets(tgt.node_prefix(name))]
            return iqns if set(iqns) == held_targets(zk, name) else None
        iqns = wait_until(exported, 60, "the node's targets: one per image it holds a replica of")
        assert len(iqns) == len(set(iqns))
        assert demo_replica(zk, lab).target in iqns
    finally:
        tgt.unexport(leftover)


def test_replicas_in_distinct_racks_survive_a_storage_node_loss(lab, client, zk, image_demo, demo_image):
    d = _workdir("cowfleet-replicas-")
    procs = {}
    extra = {f"{lab.state.lab_id}-storage-{i}": rack for i, rack in ((2, "rack-b"), (3, "rack-c"))}
    try:
        for name, rack in extra.items():
            procs[name] = c.spawn(c.python_cmd("cowfleet.agents.main", "--role", "storage", "--rack", rack,
                                               "--zk", lab.state.zk, "--name", name,
                                               "--state-dir", str(d / name)), d / f"{name}.log").pid
        wait_until(lambda: set(extra) <= {n["name"] for n in client.nodes()}, 30, "two more storage agents")
        client.put_image("rep", format="raw", min_replicas=2)
        client.upload_image("rep", demo_image)
        img = wait_until(lambda: (i := client.get_image("rep"))["status"] == "available" and i, 120,
                         "2 replicas")
        assert len({r["rack"] for r in img["replicas"]}) == 2
        # a storage node holding a copy dies (agent and, with the machine, its targets)
        victim = next(r["node"] for r in img["replicas"] if r["node"] in extra)
        os.killpg(procs[victim], signal.SIGKILL)
        c.wait_gone(procs[victim], 10)
        tgt.remove_node_targets(victim)
        wait_until(lambda: victim not in {r["node"] for r in client.get_image("rep")["replicas"]}, 30,
                   "the lost replica dropped")
        img = wait_until(lambda: (i := client.get_image("rep"))["status"] == "available" and i, 120,
                         "the lost replica re-created elsewhere")
        assert victim not in {r["node"] for r in img["replicas"]}
        assert len({r["rack"] for r in img["replicas"]}) == 2
        # new instances still provision, from a surviving replica
        client.put_group("survivor", image="rep", flavor="small", size=1)
        try:
            wait_until(lambda: running(client, "survivor", 1), 120, "survivor running")
            (cmd,) = daemons_under(node_dir(lab, "compute") / "sessions").values()
            targets = {read(zk, layout.image_replica("rep", r["node"]), Replica)[0].target
                       for r in img["replicas"]}
            assert any(f"target={t}," in " ".join(cmd) for t in targets)
        finally:
            delete_group(client, "survivor")
        client.delete_image("rep")
    finally:
        for name, pid in procs.items():
            c.stop_pid(pid)
            tgt.remove_node_targets(name)
        shutil.rmtree(d, ignore_errors=True)
        try:
            client.delete_image("rep")
        except ApiError:
            pass


def test_unused_and_orphan_sessions_are_stopped(lab):
    """A session no overlay uses (left by a crash) and a daemon no pid file
    accounts for are both stopped by the compute agent's reconcile."""
    sessions = node_dir(lab, "compute") / "sessions"
    keys = ("ghost-000000000000", "orphan-000000000000")
    agent = lab.state.pids["agent-compute"]
    try:
        # The agent's reconcile (every 5 s) is what stops them: it is held
        # (SIGSTOP) while they are made and counted, so a round cannot run in
        # between and stop the first before the second is counted; it resumes
        # at once, and the waits below are on the condition, not on the period.
        os.kill(agent, signal.SIGSTOP)
        try:
            _make_stray_sessions(sessions)
            procs = [pid for pid, cmd in daemons_under(sessions).items() if session_dir_of(cmd).name in keys]
        finally:
            os.kill(agent, signal.SIGCONT)
        assert len(procs) == 2
        wait_until(lambda: not set(procs) & set(daemons_under(sessions)), 30, "stray daemons stopped")
        wait_until(lambda: not (sessions / "ghost-000000000000").exists(), 10, "stray session folder removed")
    finally:
        for pid, cmd in daemons_under(sessions).items():
            if session_dir_of(cmd).name in keys:
                os.kill(pid, signal.SIGKILL)
        for key in keys:
            shutil.rmtree(sessions / key, ignore_errors=True)


def _make_stray_sessions(sessions: Path) -> None:
    """A session with its pid file and record but no overlay using it
    (ghost), and a daemon no pid file accounts for (orphan)."""
    for key, pidfile in (("ghost-000000000000", True), ("orphan-000000000000", False)):
        d = sessions / key
        d.mkdir()
        cmd = ["qemu-storage-daemon", "--blockdev", "driver=null-co,node-name=base,size=1048576",
               "--nbd-server", f"addr.type=unix,addr.path={d / 'nbd.sock'}",
               "--export", "type=nbd,id=exp0,node-name=base,name=img,writable=off", "--daemonize"]
        if pidfile:
            cmd += ["--pidfile", str(d / "qsd.pid")]
            (d / "session.json").write_text(json.dumps({
                "key": key, "image": "ghost", "sha256": "0" * 64, "format": "raw", "node": "",
                "portal": "", "target": "", "socket": str(d / "nbd.sock")}))
        subprocess.run(cmd, check=True)


def test_a_daemon_still_opening_its_lun_counts_once(tmp_path):
    """qemu-storage-daemon --daemonize forks twice: while the daemon opens
    its iSCSI LUN, the first process (same command line) waits for it and the
    daemon's parent is init. The waiting one is not a second daemon. The LUN
    is a portal on loopback that accepts and never answers, so the opening
    lasts until the daemon's own timeout."""
    import socket
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    portal = f"127.0.0.1:{listener.getsockname()[1]}"
    d = tmp_path / "sessions" / "slow-000000000000"
    d.mkdir(parents=True)
    cmd = ["qemu-storage-daemon", "--blockdev",
           f"driver=iscsi,transport=tcp,portal={portal},target=iqn.2026-01.test:slow,lun=1,"
           "node-name=base,read-only=on",
           "--nbd-server", f"addr.type=unix,addr.path={d / 'nbd.sock'}",
           "--export", "type=nbd,id=exp0,node-name=base,name=slow,writable=off", "--daemonize"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn = None
    try:
        conn, _ = listener.accept()      # the daemon is connecting: both processes exist now
        same = [int(p) for p in os.listdir("/proc") if p.isdigit() and cmdline(int(p)) == cmd]
        assert first.pid in same and len(same) == 2, same
        assert first.poll() is None, "the first process waits until the daemon has opened its LUN"
        (daemon,) = set(same) - {first.pid}
        assert list(daemons_under(tmp_path / "sessions")) == [daemon]
    finally:
        for pid in daemons_under(tmp_path / "sessions"):
            os.kill(pid, signal.SIGKILL)
        if conn is not None:
            conn.close()
        listener.close()
        first.wait(30)
