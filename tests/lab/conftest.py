"""The lab suite: testinfra checks every node of a lab as an operator would.

Two targets, one suite:

- the racks lab (default): this session starts ``RacksLab(racks=2,
  nodes_per_rack=2, zk=3, fake=True)`` under /var/tmp and reaches each node
  with testinfra's local backend wrapped in ``ip netns exec NODE-NAMESPACE``;
- the Vagrant lab: ``vagrant ssh-config > lab.ssh`` and
  ``COWFLEET_LAB_SSH_CONFIG=lab.ssh COWFLEET_ENDPOINT=... COWFLEET_TOKEN=...
  pytest -m lab tests/lab/test_nodes.py``: testinfra's ssh backend, one host
  per ``Host`` entry (zk1, svc, r1-s1, r1-c1, ...).

The node checks read what a node is from the files the provisioning scripts
wrote on it (``etc/cowfleet/node.env``), so both targets are checked alike.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

import pytest
import testinfra
from testinfra.backend.local import LocalBackend

from tests.conftest import _workdir

SSH_CONFIG = os.environ.get("COWFLEET_LAB_SSH_CONFIG")
# three racks: the hand-shake crosses namespaces between three rack leaders
RACKS, NODES_PER_RACK, ZK = 3, 2, 3


class NetnsBackend(LocalBackend):
    """testinfra's local backend, every command run inside a network namespace."""
    NAME = "netns"

    def __init__(self, netns: str, **kwargs):
        super().__init__(**kwargs)
        self.netns = netns

    def get_pytest_id(self) -> str:
        return f"netns://{self.netns}"

    def run(self, command: str, *args: str, **kwargs):
        return self.run_local("ip netns exec %s sh -c %s", self.netns, self.get_command(command, *args))


@dataclass
class LabNode:
    short: str           # zk1, svc, r1-s1, r1-c1, ...
    role: str
    root: str            # where its files are: "" on a VM, the node's folder in the racks lab
    host: object         # testinfra.host.Host

    def etc(self, name: str) -> str:
        return f"{self.root}/etc/cowfleet/{name}"

    def env(self, name: str = "node.env") -> dict[str, str]:
        text = self.host.file(self.etc(name)).content_string
        return {k: v.strip('"') for k, v in re.findall(r"^(\w+)=(.*)$", text, re.M)}


def role_of(short: str) -> str:
    if short.startswith("zk"):
        return "zookeeper"
    if short == "svc":
        return "service"
    return "storage" if re.match(r"r\d+-s\d+$", short) else "compute"


def node_names(roles: tuple[str, ...] = ()) -> list[str]:
    if SSH_CONFIG:
        text = open(SSH_CONFIG).read()
        names = re.findall(r"^Host\s+(\S+)", text, re.M)
    else:
        from pathlib import Path

        from cowfleet.lab.racks import plan
        names = [n.short for n in plan("x", Path("/"), RACKS, NODES_PER_RACK, ZK)]
    return [n for n in names if not roles or role_of(n) in roles]


def pytest_generate_tests(metafunc):
    if "lab_node" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("roles")   # @pytest.mark.roles("compute")
        metafunc.parametrize("lab_node", node_names(marker.args if marker else ()), indirect=True)


@pytest.fixture(scope="session")
def racks_lab():
    """The racks lab of this session (fake hypervisor), or None against Vagrant."""
    if SSH_CONFIG:
        yield None
        return
    from cowfleet.lab.racks import RacksLab
    # a component missing is a failure, never a skip (make test installs them all)
    assert shutil.which("ip"), "iproute2 is not installed (scripts/install-system-deps.sh installs it)"
    d = _workdir("cowfleet-racks-")
    lab = RacksLab(d / "lab", racks=RACKS, nodes_per_rack=NODES_PER_RACK, zk=ZK, fake=True)
    # the agents' test hook (agents/placement.py fault_point): while this file
    # exists, a coordinator waits just before its commit; the nodes inherit it
    lab.pause_file = d / "pause"
    saved = os.environ.get("COWFLEET_FAULT_PAUSE")
    os.environ["COWFLEET_FAULT_PAUSE"] = str(lab.pause_file)
    try:
        lab.up(progress=print)
        yield lab
    finally:
        if saved is None:
            os.environ.pop("COWFLEET_FAULT_PAUSE", None)
        else:
            os.environ["COWFLEET_FAULT_PAUSE"] = saved
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def api(racks_lab):
    """(endpoint, admin token) of the lab under test."""
    from cowfleet.client import Client
    if racks_lab is not None:
        return Client(racks_lab.state.endpoint, racks_lab.state.token)
    return Client(os.environ["COWFLEET_ENDPOINT"], os.environ["COWFLEET_TOKEN"])


@pytest.fixture
def lab_node(request, racks_lab) -> LabNode:
    short = request.param
    if racks_lab is None:
        host = testinfra.get_host(f"ssh://{short}", ssh_config=SSH_CONFIG, sudo=True)
        return LabNode(short, role_of(short), "", host)
    n = racks_lab.node(short)
    return LabNode(short, n.role, n.root, testinfra.host.Host(NetnsBackend(n.netns)))
