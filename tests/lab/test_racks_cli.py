"""`cowfleet lab up --racks ... / status / down` as a user runs them (a small
racks lab: 1 ZooKeeper, 1 rack of 1 storage + 1 compute, fake hypervisor)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from cowfleet.config import SECRET_FILE_VAR
from cowfleet.lab import netns
from cowfleet.lab.components import pid_alive
from tests.lab.conftest import SSH_CONFIG

pytestmark = [pytest.mark.lab, pytest.mark.skipif(bool(SSH_CONFIG), reason="racks lab machine only")]


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "cowfleet.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_racks_lab_up_status_down():
    labdir = tempfile.mkdtemp(prefix="cowfleet-racks-cli-", dir="/var/tmp")
    env = dict(os.environ, COWFLEET_LAB_DIR=labdir)
    env.pop(SECRET_FILE_VAR, None)           # no secret configured: the lab makes its own
    up = cli("lab", "up", "--racks", "1", "--nodes-per-rack", "1", "--zk", "1", "--fake", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.load(open(os.path.join(labdir, "lab.json")))
    try:
        assert state["kind"] == "racks"
        lines = dict(line.split("=", 1) for line in up.stdout.splitlines() if line.startswith("COWFLEET_"))
        assert lines["COWFLEET_ENDPOINT"].startswith("http://127.0.0.1:")
        assert f"COWFLEET_TOKEN={lines['COWFLEET_TOKEN']}" in open(os.path.join(labdir, "env")).read()
        assert len(netns.names(f"cf-{state['lab_id']}-")) == 5        # fabric + 4 nodes

        status = cli("lab", "status", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        for word in ("zk1", "svc", "r1-s1", "r1-c1", "api", "healthy", "10.77.1.11:7070"):
            assert word in status.stdout

        # the cluster secret: made for this lab, kept to root, given to every
        # service and agent node, never printed nor in lab.json
        secret_file = os.path.join(labdir, "secret")
        assert lines[SECRET_FILE_VAR] == secret_file
        assert f"{SECRET_FILE_VAR}={secret_file}" in open(os.path.join(labdir, "env")).read()
        assert os.stat(secret_file).st_mode & 0o777 == 0o600
        secret = open(secret_file).read().strip()
        assert len(secret) >= 32 and secret != open(os.environ[SECRET_FILE_VAR]).read().strip()
        for n in state["nodes"]:
            node_secret = os.path.join(n["root"], "etc", "cowfleet", "secret")
            if n["role"] == "zookeeper":
                assert not os.path.exists(node_secret)
            else:
                assert open(node_secret).read().strip() == secret
                assert os.stat(node_secret).st_mode & 0o777 == 0o600
        for out in (up.stdout + up.stderr, status.stdout + status.stderr, open(os.path.join(labdir, "lab.json")).read()):
            assert secret not in out

        other = cli("lab", "up", env=env)              # the one-node lab may not start on top of it
        assert other.returncode != 0 and "another kind of lab" in other.stderr
    finally:
        down = cli("lab", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(labdir)
    assert netns.names(f"cf-{state['lab_id']}-") == []
    for n in state["nodes"]:
        assert not (n["pid"] and pid_alive(n["pid"])), n
    assert not pid_alive(state["proxy_pid"])
