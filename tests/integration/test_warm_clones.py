"""Warm clones on a real guest (issue 13): the demo guest booted to its
readiness line, saved as a template (no NIC), and three clones restored
from it at once, each under its own name, UUID and generation ID on its
own overlay backed by the template's frozen one, with its own NIC
hot-plugged: the device has the clone's MAC and the guest's virtio driver
takes it. One guest boots; the clones are restored, not booted."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cowfleet.agents.compute.domain import DomainSpec
from cowfleet.agents.compute.hypervisor import LibvirtHypervisor, domain_name
from cowfleet.agents.compute.savefile import SaveImage
from cowfleet.guest.builder import READY_MARKER
from tests.conftest import _workdir
from tests.helpers import qmp, wait_until

pytestmark = pytest.mark.integration

NODE = f"warmtest-{secrets.token_hex(3)}"


@pytest.fixture
def hyper(libvirtd):
    h = LibvirtHypervisor("qemu:///system", "qemu")
    yield h
    for iid in h.list(NODE):                       # whatever a failing test left
        h.destroy(domain_name(NODE, iid))


@pytest.fixture
def folder():
    d = _workdir("cowfleet-warm-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def overlay(path: Path, backing: Path, fmt: str) -> str:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(backing), str(path)],
                   check=True)
    return str(path)


def spec(folder: Path, iid: str, disk: str, mac: str | None) -> DomainSpec:
    # the template: no NIC, a generation ID; a clone: a user-mode NIC (a
    # device with a MAC, and nothing of the host's network touched)
    return DomainSpec(name=domain_name(NODE, iid), instance_id=iid, group="warm", node=NODE, vcpus=1,
                      memory_mib=128, disk_path=disk, console_log=str(folder / f"{iid}.log"),
                      virt_type="qemu", network="user" if mac else "none", mac=mac, genid=not mac)


def nic_driver_ok(hyper, name: str) -> bool:
    nets = [d["path"] for d in qmp(hyper, name, "x-query-virtio") if d["name"] == "virtio-net"]
    return bool(nets) and "DRIVER_OK" in str(qmp(hyper, name, "x-query-virtio-status", path=nets[0])["status"])


def test_three_clones_of_a_ready_guest_run_at_once(hyper, folder, demo_image):
    tmpl = spec(folder, "tmpl", overlay(folder / "tmpl.qcow2", demo_image, "raw"), None)
    hyper.start(tmpl)
    wait_until(lambda: READY_MARKER in Path(tmpl.console_log).read_text(errors="replace"), 240,
               "the template guest's readiness line")
    image = hyper.save_template(tmpl.name, folder / "tmpl.save")
    assert image.was_running and image.body_len > 64 << 20       # the guest's memory, not a stub
    assert hyper.list(NODE) == {}
    os.chmod(tmpl.disk_path, 0o444)        # frozen: the memory in the image is of this disk

    clones = [spec(folder, f"c{n}", overlay(folder / f"c{n}.qcow2", Path(tmpl.disk_path), "qcow2"),
                   f"02:00:00:00:0d:0{n}") for n in (1, 2, 3)]
    errors = []

    def restore(c):
        try:
            hyper.restore_clone(image.path, c)
        except Exception as exc:           # noqa: BLE001 -- reported below, per clone
            errors.append((c.name, exc))
    threads = [threading.Thread(target=restore, args=(c,)) for c in clones]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    listed = hyper.list(NODE)
    assert set(listed) == {"c1", "c2", "c3"}
    assert all(i.running and not i.paused for i in listed.values())
    xmls = {c.name: ET.fromstring(hyper._conn().lookupByName(c.name).XMLDesc(0)) for c in clones}
    template = ET.fromstring(image.xml)
    for ident in ("uuid", "genid"):
        values = {x.findtext(ident) for x in xmls.values()} | {template.findtext(ident)}
        assert len(values) == 4, (ident, values)
    for c in clones:
        x = xmls[c.name]
        assert x.find("devices/interface/mac").get("address") == c.mac
        assert [n["main-mac"] for n in qmp(hyper, c.name, "query-rx-filter")] == [c.mac]
        assert x.find("devices/disk/source").get("file") == c.disk_path
        assert x.find("devices/disk/backingStore/source").get("file") == tmpl.disk_path
    # the restored guest runs: its kernel finds the hot-plugged NIC (ACPI
    # PCI hotplug) and its virtio driver sets the device up (DRIVER_OK)
    # (seconds on a quiet machine; up to minutes at load 50+ under TCG)
    wait_until(lambda: all(nic_driver_ok(hyper, c.name) for c in clones), 150,
               "every clone's guest to take its hot-plugged NIC")
    assert all(hyper.destroy(c.name) for c in clones)
    assert hyper.list(NODE) == {}
    SaveImage.read(image.path)             # the template is untouched by its clones
    for c in clones:
        os.unlink(c.disk_path)
        os.unlink(c.console_log)
    for p in (image.path, tmpl.disk_path, tmpl.console_log):
        os.unlink(p)
    assert sorted(os.listdir(folder)) == [], "nothing left but what the test removed"
