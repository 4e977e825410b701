"""Orphan image-session daemons are killed only under their session's lock:
a daemon being attached has no session.json yet and must survive."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cowfleet.agents.compute.sessions import (SessionManager, base_of, daemons_under, kill_all_under, nbd_url,
                                              short_link)
from cowfleet.procs import parent_pid
from tests.helpers import wait_until


@pytest.fixture
def fake_daemon(tmp_path):
    """A process that looks like a qemu-storage-daemon serving session KEY
    under the manager's root (argv[0] and the --nbd-server socket path)."""
    procs = []

    def start(mgr: SessionManager, key: str, code: str = "import time; time.sleep(300)") -> subprocess.Popen:
        mgr.dir(key).mkdir(parents=True, exist_ok=True)
        mgr.link(key)
        sock = mgr.socket(key)
        proc = subprocess.Popen(["bash", "-c", f'exec -a qemu-storage-daemon {sys.executable} '
                                 f'-c "{code}" --nbd-server addr.type=unix,addr.path={sock}'])
        procs.append(proc)
        wait_until(lambda: mgr.orphans(), 10, "the daemon visible")
        return proc
    yield start
    for p in procs:
        p.kill()
        p.wait()
    kill_all_under(tmp_path)


def test_orphans_name_their_session(tmp_path, fake_daemon):
    mgr = SessionManager(tmp_path / "sessions")
    proc = fake_daemon(mgr, "img-0123456789ab~2")
    assert mgr.orphans() == {proc.pid: "img-0123456789ab~2"}


def test_a_daemon_still_forking_counts_once(tmp_path, fake_daemon):
    """qemu-storage-daemon --daemonize forks and its parent, same command
    line, waits until the child has opened the LUN: one daemon, the child."""
    mgr = SessionManager(tmp_path / "sessions")
    proc = fake_daemon(mgr, "img-0123456789ab",
                       code="import os, time; os.fork() or time.sleep(300); os.wait()")
    wait_until(lambda: any(parent_pid(p) == proc.pid for p in daemons_under(tmp_path)), 10, "the child")
    (child,) = daemons_under(tmp_path)
    assert parent_pid(child) == proc.pid and proc.poll() is None


def test_a_daemon_being_attached_is_not_killed(tmp_path, fake_daemon):
    mgr = SessionManager(tmp_path / "sessions")
    key = "img-0123456789ab"
    proc = fake_daemon(mgr, key)
    with mgr.lock(base_of(key)):          # an attach of this image runs right now
        assert mgr.kill_orphans() == []
        assert proc.poll() is None
    # once the attach is over and it still has no session.json, it is an orphan
    assert mgr.kill_orphans() == [(proc.pid, key)]
    assert proc.wait(10) is not None
    assert not os.path.exists(f"/proc/{proc.pid}") or proc.returncode is not None


def test_socket_paths_stay_short_whatever_the_state_dir(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    mgr = SessionManager(deep / "sessions")
    key = "an-image-name-of-sixty-three-characters-long-enough-to-hurt-xyz-0123456789ab~12"
    mgr.dir(key).mkdir(parents=True)
    link = mgr.link(key)
    assert len(str(mgr.socket(key))) < 108
    assert link.resolve() == mgr.dir(key).resolve()
    backing = nbd_url(str(mgr.socket(key)), key)
    assert mgr.key_of_backing(backing) == key
    assert SessionManager(tmp_path / "other").key_of_backing(backing) is None
    mgr._clear(key)
    assert not link.is_symlink() and not short_link(mgr.dir(key)).exists()


def test_short_links_whose_agent_folder_is_gone_are_removed_once_old(tmp_path):
    from cowfleet.agents.compute.sessions import remove_dangling_links
    run = tmp_path / "run"
    run.mkdir()
    live_root, gone_root = tmp_path / "agent-a" / "sessions", tmp_path / "agent-b" / "sessions"
    (live_root / "img-1").mkdir(parents=True)
    (run / "a").symlink_to(live_root / "img-1")
    (run / "b").symlink_to(gone_root / "img-2")       # the agent's folder removed (a lab deleted after a kill)
    (run / "c").symlink_to(gone_root / "img-3")       # the same, but just made
    (run / "d").symlink_to(live_root / "img-4")       # a live agent's session between stop and start
    old = os.stat(run / "a", follow_symlinks=False).st_mtime - 120
    for name in ("a", "b", "d"):
        os.utime(run / name, (old, old), follow_symlinks=False)
    assert remove_dangling_links(60, run) == ["b"]
    assert sorted(p.name for p in run.iterdir()) == ["a", "c", "d"]
