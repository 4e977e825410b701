"""Warm clones on a real guest (issue 13): the demo guest booted as a
template (no seed, no NIC) to its template marker, where it waits, saved,
and sixteen clones restored from it at once (the issue's group of 16), each under its own name, UUID
and generation ID on its own overlay backed by the template's frozen one,
with its own NIC and NoCloud seed hot-plugged: the guest wakes, runs its
first-boot path with the clone's identity (instance id, host name, address,
user data once) and prints its own readiness line. One guest boots; the
clones are restored, not booted."""
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
from cowfleet.agents.compute.seed import SeedData, build_seed
from cowfleet.guest.builder import READY_MARKER, TEMPLATE_MARKER
from tests.conftest import _workdir
from tests.helpers import qmp, wait_until

pytestmark = pytest.mark.integration

NODE = f"warmtest-{secrets.token_hex(3)}"
CLONES = 16


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


def spec(folder: Path, iid: str, disk: str, mac: str | None, seed: str | None = None) -> DomainSpec:
    # the template: no NIC, no seed, a template (generation ID, SMBIOS
    # product); a clone: a user-mode NIC (a device with a MAC, and nothing
    # of the host's network touched) and its seed
    return DomainSpec(name=domain_name(NODE, iid), instance_id=iid, group="warm", node=NODE, vcpus=1,
                      memory_mib=128, disk_path=disk, console_log=str(folder / f"{iid}.log"),
                      virt_type="qemu", network="user" if mac else "none", mac=mac, seed_path=seed,
                      template=not mac)


# what the clone's user data says on the console: its host name, how many
# times user data ran on this disk (the template's included), 16 bytes of
# its RNG
USER_DATA = """#!/bin/sh
echo run >> /var/lib/cowfleet/user-data-runs
set -- $(wc -l < /var/lib/cowfleet/user-data-runs) $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' ')
echo "user-data host=$(hostname) runs=$1 random=$2" > /dev/ttyS0
"""


def clone_seed(folder: Path, n: int, mac: str) -> str:
    return str(build_seed(SeedData(instance_id=f"c{n}-id", hostname=f"clone-{n}", mac=mac,
                                   address=f"10.0.2.{20 + n}/24", gateway="10.0.2.2", user_data=USER_DATA,
                                   random_seed=secrets.token_urlsafe(32)), folder / f"c{n}.iso"))


def console(c: DomainSpec) -> str:
    return Path(c.console_log).read_text(errors="replace")


def nic_driver_ok(hyper, name: str) -> bool:
    nets = [d["path"] for d in qmp(hyper, name, "x-query-virtio") if d["name"] == "virtio-net"]
    return bool(nets) and "DRIVER_OK" in str(qmp(hyper, name, "x-query-virtio-status", path=nets[0])["status"])


def test_sixteen_clones_of_a_template_wake_with_their_own_identity(hyper, folder, demo_image):
    tmpl = spec(folder, "tmpl", overlay(folder / "tmpl.qcow2", demo_image, "raw"), None)
    hyper.start(tmpl)
    wait_until(lambda: TEMPLATE_MARKER in console(tmpl), 240, "the template guest's template marker")
    assert READY_MARKER not in console(tmpl)               # it waits before any identity
    assert "rng: virtio_rng.0" in console(tmpl)           # its kernel's entropy source is the host's
    image = hyper.save_template(tmpl.name, folder / "tmpl.save")
    # the guest's memory, not a stub: ~70 MB of its 128 MiB (its free pages
    # zeroed before the save, which qemu's stream leaves out; 95 MB before)
    assert image.was_running and image.body_len > 32 << 20
    assert hyper.list(NODE) == {}
    os.chmod(tmpl.disk_path, 0o444)        # frozen: the memory in the image is of this disk

    numbers = range(1, CLONES + 1)
    macs = {n: f"02:00:00:00:0d:{n:02x}" for n in numbers}
    clones = [spec(folder, f"c{n}", overlay(folder / f"c{n}.qcow2", Path(tmpl.disk_path), "qcow2"),
                   macs[n], clone_seed(folder, n, macs[n])) for n in numbers]
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
    assert set(listed) == {f"c{n}" for n in numbers}
    assert all(i.running and not i.paused for i in listed.values())
    xmls = {c.name: ET.fromstring(hyper._conn().lookupByName(c.name).XMLDesc(0)) for c in clones}
    template = ET.fromstring(image.xml)
    for ident in ("uuid", "genid"):
        values = {x.findtext(ident) for x in xmls.values()} | {template.findtext(ident)}
        assert len(values) == CLONES + 1, (ident, values)
    for c in clones:
        x = xmls[c.name]
        assert x.find("devices/interface/mac").get("address") == c.mac
        assert [n["main-mac"] for n in qmp(hyper, c.name, "query-rx-filter")] == [c.mac]
        disks = {d.find("target").get("dev"): d for d in x.findall("devices/disk")}
        assert disks["vda"].find("source").get("file") == c.disk_path
        assert disks["vda"].find("backingStore/source").get("file") == tmpl.disk_path
        assert disks["vdb"].find("source").get("file") == c.seed_path       # hot-plugged
    # each guest wakes on its seed and runs its first boot as itself
    # (seconds on a quiet machine; up to minutes at load 50+ under TCG)
    wait_until(lambda: all(READY_MARKER in console(c) for c in clones), 600,
               "every clone's own readiness line")
    randoms = set()
    for n, c in enumerate(clones, start=1):
        text = console(c)
        assert TEMPLATE_MARKER not in text              # its console starts at the restore
        ready = next(line for line in text.splitlines() if line.startswith(READY_MARKER))
        assert f"instance=c{n}-id " in ready and f"address=10.0.2.{20 + n}/24" in ready, text
        assert " boots=1 " in ready, text                # the template's one boot, not a count of its own
        assert f"network eth0 mac={c.mac} address=10.0.2.{20 + n}/24" in text or \
            f"mac={c.mac} address=10.0.2.{20 + n}/24" in text, text
        line = next(line for line in text.splitlines() if line.startswith("user-data "))
        assert line.startswith(f"user-data host=clone-{n} runs=1 random="), text   # once, here
        randoms.add(line.rsplit("random=", 1)[1])
        assert nic_driver_ok(hyper, c.name)
    assert len(randoms) == CLONES, randoms                    # the template's RNG state is not shared
    assert all(hyper.destroy(c.name) for c in clones)
    assert hyper.list(NODE) == {}
    SaveImage.read(image.path)             # the template is untouched by its clones
    for c in clones:
        for p in (c.disk_path, c.console_log, c.seed_path):
            os.unlink(p)
    for p in (image.path, tmpl.disk_path, tmpl.console_log):
        os.unlink(p)
    assert sorted(os.listdir(folder)) == [], "nothing left but what the test removed"
