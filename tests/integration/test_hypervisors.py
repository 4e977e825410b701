"""One contract, two hypervisors: the libvirt driver (real libvirtd, a TCG
guest on an empty qcow2 disk) and the fake one the scale tests use must
answer start / list / resume / destroy alike."""
from __future__ import annotations

import secrets
import shutil
import subprocess

import pytest

from cowfleet.agents.compute.domain import DomainSpec
from cowfleet.agents.compute.hypervisor import FakeHypervisor, LibvirtHypervisor, domain_name
from tests.conftest import _workdir

pytestmark = pytest.mark.integration


@pytest.fixture(params=["libvirt", "fake"])
def hyper(request, libvirtd):
    if request.param == "fake":
        yield FakeHypervisor()
        return
    h = LibvirtHypervisor("qemu:///system", "qemu")
    yield h
    for iid in h.list(NODE):                       # whatever a failing test left
        h.destroy(domain_name(NODE, iid))


NODE = f"hvtest-{secrets.token_hex(3)}"


@pytest.fixture
def spec_for():
    d = _workdir("cowfleet-hv-")
    specs = []

    def make(node: str = NODE, iid: str | None = None) -> DomainSpec:
        iid = iid or f"g-{secrets.token_hex(3)}"
        disk = d / f"{iid}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
        spec = DomainSpec(name=domain_name(node, iid), instance_id=iid, group="g", node=node, vcpus=1,
                          memory_mib=64, disk_path=str(disk), console_log=str(d / f"{iid}.log"),
                          virt_type="qemu", network="none")
        specs.append(spec)
        return spec
    yield make
    shutil.rmtree(d, ignore_errors=True)


def test_start_list_destroy(hyper, spec_for):
    a, b = spec_for(), spec_for()
    hyper.start(a)
    hyper.start(b)
    listed = hyper.list(NODE)
    assert set(listed) == {a.instance_id, b.instance_id}
    info = listed[a.instance_id]
    assert (info.name, info.group, info.running, info.paused) == (a.name, "g", True, False)
    assert hyper.destroy(a.name) is True
    assert set(hyper.list(NODE)) == {b.instance_id}
    assert hyper.destroy(a.name) is False          # already gone
    assert hyper.destroy(b.name) is True
    assert hyper.list(NODE) == {}


def test_a_name_runs_once(hyper, spec_for):
    a = spec_for()
    hyper.start(a)
    try:
        with pytest.raises(Exception):
            hyper.start(a)
        assert list(hyper.list(NODE)) == [a.instance_id]
    finally:
        hyper.destroy(a.name)


def test_list_shows_only_the_nodes_own_domains(hyper, spec_for):
    mine, other = spec_for(), spec_for(node=NODE + "-other")
    hyper.start(mine)
    hyper.start(other)
    try:
        assert set(hyper.list(NODE)) == {mine.instance_id}
        assert set(hyper.list(NODE + "-other")) == {other.instance_id}
    finally:
        hyper.destroy(mine.name)
        hyper.destroy(other.name)
