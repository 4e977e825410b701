"""`cowfleet lab up / status / down` and `cowfleet demo`, as a user runs them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import libvirt
import pytest

from cowfleet.lab.components import pid_alive

pytestmark = pytest.mark.integration


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "cowfleet.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_lab_up_demo_status_down_leaves_nothing(libvirtd, demo_image, tmp_path_factory):
    import tempfile
    labdir = tempfile.mkdtemp(prefix="cowfleet-cli-lab-", dir="/var/tmp")
    os.chmod(labdir, 0o755)
    env = dict(os.environ, COWFLEET_LAB_DIR=labdir)
    env.pop("COWFLEET_ENDPOINT", None)
    env.pop("COWFLEET_TOKEN", None)
    up = cli("lab", "up", env=env)
    assert up.returncode == 0, up.stderr
    lines = dict(l.split("=", 1) for l in up.stdout.splitlines() if l.startswith("COWFLEET_"))
    assert lines["COWFLEET_ENDPOINT"].startswith("http://127.0.0.1:")
    assert len(lines["COWFLEET_TOKEN"]) > 20
    env_file = open(os.path.join(labdir, "env")).read()
    assert f"COWFLEET_TOKEN={lines['COWFLEET_TOKEN']}" in env_file
    state = json.load(open(os.path.join(labdir, "lab.json")))
    try:
        status = cli("lab", "status", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        for component in ("zookeeper", "service", "agent-storage", "agent-compute", "api"):
            assert component in status.stdout

        # the main job, reading endpoint and token from the lab's env file
        demo = cli("demo", "--image", str(demo_image), "--size", "2", env=env)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "2/2 ready" in demo.stdout
        assert "all 2 running" in demo.stdout
        groups = cli("group", "list", env=env)
        assert groups.returncode == 0 and "demo" in groups.stdout and "ready" in groups.stdout
    finally:
        down = cli("lab", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(labdir)
    for name, pid in state["pids"].items():
        assert not pid_alive(pid), f"{name} (pid {pid}) still running after lab down"
    if state["started_tgtd"]:
        assert not pid_alive(state["started_tgtd"]), "tgtd started by the lab still running"
    conn = libvirt.open("qemu:///system")
    try:
        assert not [d.name() for d in conn.listAllDomains() if d.name().startswith(f"cf-{state['lab_id']}-")]
    finally:
        conn.close()
    # the data path leaves nothing either: no image session, no iSCSI target of the lab's nodes
    from cowfleet.agents.compute.sessions import daemons_under
    from cowfleet.agents.storage import tgt
    assert daemons_under(labdir) == {}
    assert not [t.iqn for t in tgt.list_targets(f"{tgt.IQN_PREFIX}:{state['lab_id']}-")]
    again = cli("lab", "status", env=env)
    assert again.returncode != 0 and "no lab" in again.stdout


def test_cli_errors_are_one_line(tmp_path):
    env = dict(os.environ, COWFLEET_LAB_DIR=str(tmp_path / "none"))
    env.pop("COWFLEET_ENDPOINT", None)
    env.pop("COWFLEET_TOKEN", None)
    out = cli("group", "list", env=env)
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("cowfleet: no endpoint")
    env["COWFLEET_ENDPOINT"], env["COWFLEET_TOKEN"] = "http://127.0.0.1:9", "x"
    out = cli("group", "get", "web", env=env)
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and "cannot reach the service" in out.stderr
