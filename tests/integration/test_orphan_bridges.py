"""An agent's bridge carries its state folder as alias; a bridge whose folder
is gone -- what a lab killed without ``lab down`` and then deleted leaves --
is removed by the next ``lab up`` or ``lab down``, and nothing else is."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from cowfleet.agents.compute.network import OWNER_ALIAS, LinuxBridgeNetwork, remove_orphan_bridges
from cowfleet.lab import netns
from tests.conftest import _workdir

pytestmark = pytest.mark.integration


def bridges(ns: str | None = None) -> dict[str, str]:
    out = netns.ip(*(["-n", ns] if ns else []), "-j", "link", "show", "type", "bridge")
    return {link["ifname"]: link.get("ifalias", "") for link in json.loads(out or "[]")}


def test_only_a_bridge_whose_agent_folder_is_gone_is_removed():
    ns = f"cf-orphan{secrets.token_hex(3)}"
    kept, gone = _workdir("cowfleet-owner-"), _workdir("cowfleet-owner-")
    netns.ip("netns", "add", ns)
    try:
        LinuxBridgeNetwork("cfbr-kept", netns=ns, owner=str(kept)).setup("10.78.251.0/24")
        LinuxBridgeNetwork("cfbr-gone", netns=ns, owner=str(gone)).setup("10.78.252.0/24")
        LinuxBridgeNetwork("cfbr-nobody", netns=ns).setup("10.78.253.0/24")
        netns.ip("-n", ns, "link", "add", "br-other", "type", "bridge")
        assert bridges(ns)["cfbr-gone"] == OWNER_ALIAS + str(gone)
        assert remove_orphan_bridges(ns) == []            # every folder still there
        shutil.rmtree(gone)
        assert remove_orphan_bridges(ns) == ["cfbr-gone"]
        assert set(bridges(ns)) == {"cfbr-kept", "cfbr-nobody", "br-other"}
    finally:
        netns.ip("netns", "del", ns, check=False)
        shutil.rmtree(kept, ignore_errors=True)
        shutil.rmtree(gone, ignore_errors=True)


def test_lab_down_of_a_deleted_lab_removes_its_bridge():
    """As a user runs it: the lab's folder deleted by hand, then ``lab down``."""
    lab = _workdir("cowfleet-deleted-lab-")
    agent_dir = lab / "agent-compute"
    agent_dir.mkdir()
    bridge = f"cfbr-{secrets.token_hex(4)}"               # no link, no address: touches nothing
    LinuxBridgeNetwork(bridge, owner=str(agent_dir)).setup("10.78.250.0/24")
    try:
        shutil.rmtree(lab)
        env = dict(os.environ, COWFLEET_LAB_DIR=str(lab))
        down = subprocess.run([sys.executable, "-m", "cowfleet.cli", "lab", "down"], capture_output=True,
                              text=True, env=env, timeout=60)
        assert down.returncode == 0, down.stderr
        assert bridge not in bridges()
        assert bridge in down.stdout + down.stderr
    finally:
        LinuxBridgeNetwork(bridge).remove_bridge()
