"""The provisioning scripts' own start path (a host without systemd: a pid
file), as a VM runs it: inside a network namespace of the test's own, a
ZooKeeper member is started, left alone by a second run, and restarted when
its configuration changes."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from cowfleet.lab import components as c
from cowfleet.lab import netns
from tests.conftest import _workdir
from tests.helpers import wait_until
from tests.lab.conftest import SSH_CONFIG

pytestmark = [pytest.mark.lab, pytest.mark.skipif(bool(SSH_CONFIG), reason="racks lab machine only")]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "provision"
ADDR = "10.77.0.11"


@pytest.fixture
def node():
    name = f"cf-prov{secrets.token_hex(2)}-zk1"
    root = _workdir("cowfleet-prov-")
    netns.ip("netns", "add", name)
    try:
        netns.ip("-n", name, "link", "set", "lo", "up")
        netns.ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")   # no dummy module here
        netns.ip("-n", name, "addr", "add", f"{ADDR}/16", "dev", "eth0")
        netns.ip("-n", name, "link", "set", "eth0", "up")
        yield name, root
    finally:
        for pid in netns.pids(name):
            c.stop_pid(pid, group=False)
        netns.ip("netns", "del", name, check=False)
        shutil.rmtree(root, ignore_errors=True)


def run(name, root, **env):
    full = dict(os.environ, COWFLEET_ROOT=str(root), COWFLEET_INSTALL="0", COWFLEET_START="1",
                COWFLEET_NODE="zk1", COWFLEET_ADDR=ADDR, COWFLEET_ZK_SERVERS=f"1={ADDR}", **env)
    proc = subprocess.run(["ip", "netns", "exec", name, "sh", str(SCRIPTS / "zookeeper.sh")], env=full,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def serving(name):
    try:
        return b"Mode:" in netns.ask(name, ADDR, 2181, b"srvr")
    except OSError:
        return False


def test_started_once_and_restarted_only_on_change(node):
    name, root = node
    pidfile = root / "run/cowfleet/zookeeper.pid"
    out = run(name, root)
    assert "started zookeeper" in out
    wait_until(lambda: serving(name), 60, "ZooKeeper serving in the namespace")
    pid = int(pidfile.read_text())
    assert pid in netns.pids(name)

    out = run(name, root)
    assert "already running" in out and int(pidfile.read_text()) == pid

    out = run(name, root, COWFLEET_ZK_TICK_MS="600")
    assert "restarting zookeeper" in out
    new = int(pidfile.read_text())
    assert new != pid and not c.pid_alive(pid)
    wait_until(lambda: serving(name), 60, "ZooKeeper serving again")
    os.killpg(new, signal.SIGTERM)
    c.wait_gone(new, 10)
