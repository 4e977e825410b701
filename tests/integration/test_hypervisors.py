"""One contract, two hypervisors: the libvirt driver (real libvirtd, a TCG
guest on an empty qcow2 disk) and the fake one the scale tests use must
answer start / list / resume / destroy / save_template / restore_clone alike."""
from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cowfleet.agents.compute.domain import DomainSpec
from cowfleet.agents.compute.hypervisor import FakeHypervisor, LibvirtHypervisor, domain_name
from cowfleet.agents.compute.network import FakeNodeNetwork, LinuxBridgeNetwork, tap_name
from cowfleet.agents.compute.savefile import SaveImage, SaveImageError
from cowfleet.lab import netns
from tests.conftest import _workdir
from tests.helpers import qmp, wait_until

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

    def make(node: str = NODE, iid: str | None = None, genid: bool = False,
             backing: str | None = None) -> DomainSpec:
        iid = iid or f"g-{secrets.token_hex(3)}"
        disk = d / f"{iid}.qcow2"
        # a clone's disk: an overlay on its template's (frozen) one
        args = ["-F", "qcow2", "-b", backing, str(disk)] if backing else [str(disk), "64M"]
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args], check=True)
        spec = DomainSpec(name=domain_name(node, iid), instance_id=iid, group="g", node=node, vcpus=1,
                          memory_mib=64, disk_path=str(disk), console_log=str(d / f"{iid}.log"),
                          virt_type="qemu", network="none", genid=genid)
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


# -- a tap NIC (the agent in another network namespace than libvirtd) -----------

@pytest.fixture
def node_net(hyper):
    """The node's bridge: for libvirt in a network namespace of this test's
    own (a racks-lab node's position: libvirtd is in this machine's namespace),
    for the fake one in memory."""
    if isinstance(hyper, FakeHypervisor):
        net = FakeNodeNetwork("cfbr-hvtest")
        net.setup("10.78.254.0/24")
        yield net
        return
    name = f"cf-hvtest{secrets.token_hex(3)}"
    netns.ip("netns", "add", name)
    try:
        net = LinuxBridgeNetwork("cfbr-hvtest", netns=name)
        net.setup("10.78.254.0/24")
        net.netns = name
        yield net
    finally:
        netns.ip("netns", "del", name, check=False)


def tap_spec(spec: DomainSpec) -> DomainSpec:
    return dataclasses.replace(spec, network="tap", tap=tap_name(spec.instance_id), bridge="cfbr-hvtest",
                               mac="02:00:00:00:00:01")


def links(ns: str | None = None) -> str:
    return netns.ip(*(["-n", ns] if ns else []), "-o", "link", "show")


def test_a_tap_is_attached_while_the_domain_is_paused(hyper, spec_for, node_net):
    spec = tap_spec(spec_for())
    seen = []

    def attach(tap):
        seen.append((tap, hyper.list(NODE)[spec.instance_id].paused))
        node_net.attach(tap)
    hyper.start(spec, attach=attach)
    try:
        assert seen == [(spec.tap, True)]
        info = hyper.list(NODE)[spec.instance_id]
        assert info.running and not info.paused
        if isinstance(hyper, LibvirtHypervisor):
            # moved out of libvirtd's namespace into the node's, onto its bridge, up
            line = next(x for x in links(node_net.netns).splitlines() if f" {spec.tap}:" in x)
            assert "master cfbr-hvtest" in line and ",UP" in line, line
            assert f" {spec.tap}:" not in links()
        else:
            assert node_net.ports == {spec.tap}
    finally:
        hyper.destroy(spec.name)
    if isinstance(hyper, LibvirtHypervisor):
        assert f" {spec.tap}:" not in links(node_net.netns), "the tap goes with its qemu"


def test_a_tap_nic_needs_attach_and_a_failed_attach_leaves_no_domain(hyper, spec_for):
    spec = tap_spec(spec_for())
    with pytest.raises(ValueError, match="attach"):
        hyper.start(spec)

    def attach(tap):
        raise RuntimeError(f"cannot attach {tap}")
    with pytest.raises(RuntimeError, match="cannot attach"):
        hyper.start(spec, attach=attach)
    assert hyper.list(NODE) == {}


def test_resume_attaches_the_taps_of_a_domain_left_paused(hyper, spec_for, node_net):
    """An agent that died between creating a domain and attaching its tap:
    the next one resumes it (agent._adopt), attaching first."""
    spec = tap_spec(spec_for())
    if isinstance(hyper, LibvirtHypervisor):
        import libvirt
        from cowfleet.agents.compute.domain import domain_xml
        hyper._conn().createXML(domain_xml(spec), libvirt.VIR_DOMAIN_START_PAUSED)
    else:
        hyper._domains[spec.name] = (spec, True)
    try:
        assert hyper.list(NODE)[spec.instance_id].paused
        hyper.resume(spec.name, attach=node_net.attach)
        assert not hyper.list(NODE)[spec.instance_id].paused
        if isinstance(hyper, LibvirtHypervisor):
            assert "master cfbr-hvtest" in next(x for x in links(node_net.netns).splitlines()
                                                if f" {spec.tap}:" in x)
        else:
            assert node_net.ports == {spec.tap}
        node_net.attach(spec.tap)          # again: nothing to do
    finally:
        hyper.destroy(spec.name)


# -- warm clones: a saved template restored under other identities -------------

def live_xml(hyper, spec: DomainSpec) -> ET.Element | None:
    if isinstance(hyper, LibvirtHypervisor):
        return ET.fromstring(hyper._conn().lookupByName(spec.name).XMLDesc(0))
    return None


def saved_template(hyper, spec_for) -> tuple[DomainSpec, Path]:
    tmpl = spec_for(genid=True)
    hyper.start(tmpl)
    path = Path(tmpl.disk_path).with_suffix(".save")
    image = hyper.save_template(tmpl.name, path)
    assert image.path == str(path) and image.body_len > 0
    assert tmpl.instance_id not in hyper.list(NODE), "a saved domain stops"
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name)) == [path.name]
    return tmpl, path


def test_a_saved_template_restores_as_clones_of_their_own(hyper, spec_for):
    tmpl, path = saved_template(hyper, spec_for)
    clones = [spec_for(backing=tmpl.disk_path) for _ in range(2)]
    seed = path.with_name("c0.iso")          # a clone's seed is hot-plugged with its NIC
    seed.write_bytes(bytes(1 << 20))
    clones[0] = dataclasses.replace(clones[0], seed_path=str(seed))
    try:
        hyper.restore_clone(path, clones[0])
        # the libvirt driver's fallback: a whole copy of the image in place of the FIFO
        hyper.restore_clone(path, clones[1], **({"copy": True} if isinstance(hyper, LibvirtHypervisor) else {}))
        listed = hyper.list(NODE)
        assert set(listed) == {c.instance_id for c in clones}
        assert all(i.running and not i.paused for i in listed.values())
        if isinstance(hyper, LibvirtHypervisor):
            template = ET.fromstring(SaveImage.read(path).xml)
            xmls = [live_xml(hyper, c) for c in clones]
            uuids = {x.findtext("uuid") for x in xmls} | {template.findtext("uuid")}
            genids = {x.findtext("genid") for x in xmls} | {template.findtext("genid")}
            assert len(uuids) == 3 and len(genids) == 3 and None not in genids
            assert [x.find("devices/disk/source").get("file") for x in xmls] == [c.disk_path for c in clones]
            seeds = [[d.find("source").get("file") for d in x.findall("devices/disk")
                      if d.find("target").get("dev") == "vdb"] for x in xmls]
            assert seeds == [[str(seed)], []]
    finally:
        for c in clones:
            hyper.destroy(c.name)
    assert hyper.list(NODE) == {}
    assert not list(path.parent.glob(".restore-*")), "no FIFO left behind"


def test_a_spare_waits_paused_apart_and_is_claimed_whole_by_an_instance(hyper, spec_for, node_net):
    """A warm spare (spares.py): restored ahead under a node of its own,
    paused, with no NIC or seed; claimed, it is the instance's domain --
    listed, named (name_of) and destroyed as the instance -- with the
    instance's identity, NIC (tap attached while paused) and seed."""
    tmpl, path = saved_template(hyper, spec_for)
    spare_node = f"{NODE}~spare"
    spare = spec_for(node=spare_node, backing=tmpl.disk_path)
    hyper.restore_spare(path, spare)
    try:
        assert hyper.list(NODE) == {}, "an unclaimed spare is no instance of the node"
        [info] = hyper.list(spare_node).values()
        assert (info.name, info.paused) == (spare.name, True)
        seed = path.with_name("spare-seed.iso")
        seed.write_bytes(bytes(1 << 20))
        inst = dataclasses.replace(tap_spec(spec_for(iid=f"g-{secrets.token_hex(3)}")), mac="02:00:00:00:00:05",
                                   seed_path=str(seed), name=spare.name)
        with pytest.raises(ValueError, match="attach"):
            hyper.claim_spare(spare.name, inst)
        assert hyper.list(spare_node)[spare.instance_id].paused, "refused before it was touched"
        seen = []

        def attach(tap):
            seen.append((tap, hyper.list(NODE)[inst.instance_id].paused))
            node_net.attach(tap)
        hyper.claim_spare(spare.name, inst, attach=attach)
        assert seen == [(inst.tap, True)]
        listed = hyper.list(NODE)
        assert set(listed) == {inst.instance_id} and hyper.list(spare_node) == {}
        got = listed[inst.instance_id]
        assert (got.name, got.group, got.running, got.paused) == (spare.name, "g", True, False)
        assert hyper.name_of(NODE, inst.instance_id) == spare.name
        if isinstance(hyper, LibvirtHypervisor):
            x = live_xml(hyper, inst)
            assert x.find("devices/interface/mac").get("address") == inst.mac
            assert [d.find("source").get("file") for d in x.findall("devices/disk")
                    if d.find("target").get("dev") == "vdb"] == [str(seed)]
            # a new reader of the host (a restarted agent) sees the instance too
            assert LibvirtHypervisor("qemu:///system", "qemu").list(NODE)[inst.instance_id].name == spare.name
        with pytest.raises(SaveImageError, match="not paused"):
            hyper.claim_spare(spare.name, inst, attach=attach)      # claimed once only
        assert hyper.list(NODE)[inst.instance_id].running, "a running instance is left alone"
        assert hyper.destroy(hyper.name_of(NODE, inst.instance_id))
        assert hyper.list(NODE) == {}
        assert hyper.name_of(NODE, inst.instance_id) == domain_name(NODE, inst.instance_id)
        other = spec_for(node=spare_node, backing=tmpl.disk_path)
        hyper.restore_spare(path, other)

        def refuse(tap):
            raise RuntimeError(f"cannot attach {tap}")
        with pytest.raises(RuntimeError, match="cannot attach"):
            hyper.claim_spare(other.name, dataclasses.replace(inst, name=other.name), attach=refuse)
        assert hyper.list(NODE) == {} and hyper.list(spare_node) == {}, "a failed claim destroys the spare"
    finally:
        for n in (NODE, spare_node):
            for i in hyper.list(n).values():
                hyper.destroy(i.name)


def cut(path: Path, keep: int) -> Path:
    out = path.with_name(f"cut{keep}.save")
    out.write_bytes(path.read_bytes()[:keep])
    return out


def test_a_template_that_is_not_whole_or_fits_not_is_refused_leaving_nothing(hyper, spec_for):
    tmpl, path = saved_template(hyper, spec_for)
    image = SaveImage.read(path)
    partial = path.with_name("partial.save")
    partial.write_bytes(b"LibvirtQemudPart" + path.read_bytes()[16:])
    bad = [(partial, "incomplete"), (cut(path, image.body_offset + 4), "no qemu migration stream"),
           (cut(path, 200), "truncated XML")]
    if isinstance(hyper, LibvirtHypervisor):   # only qemu reads the stream to its end
        bad.append((cut(path, image.body_offset + image.body_len // 2), "refused"))
    clone = spec_for(backing=tmpl.disk_path)
    for bad_path, says in bad:
        with pytest.raises(SaveImageError, match=says):
            hyper.restore_clone(bad_path, clone)
        assert hyper.list(NODE) == {}, bad_path
    hyper.restore_clone(path, clone)           # the good one still restores
    hyper.destroy(clone.name)
    assert not list(path.parent.glob(".restore-*"))


def test_a_domain_with_a_nic_or_no_generation_id_is_no_template(hyper, spec_for, node_net):
    for spec, says in ((tap_spec(spec_for(genid=True)), "has a NIC"), (spec_for(), "no VM generation ID")):
        hyper.start(spec, attach=node_net.attach)
        try:
            with pytest.raises(SaveImageError, match=says):
                hyper.save_template(spec.name, Path(spec.disk_path).with_suffix(".save"))
            assert hyper.list(NODE)[spec.instance_id].running, "refused before saving: it still runs"
            assert not list(Path(spec.disk_path).parent.glob("*.save*"))
        finally:
            hyper.destroy(spec.name)


def test_a_clones_nic_is_plugged_and_its_tap_attached_while_it_is_paused(hyper, spec_for, node_net):
    tmpl, path = saved_template(hyper, spec_for)
    clone = dataclasses.replace(tap_spec(spec_for(backing=tmpl.disk_path)), mac="02:00:00:00:00:02")
    with pytest.raises(ValueError, match="attach"):
        hyper.restore_clone(path, clone)
    seen = []

    def attach(tap):
        seen.append((tap, hyper.list(NODE)[clone.instance_id].paused))
        node_net.attach(tap)
    hyper.restore_clone(path, clone, attach=attach)
    try:
        assert seen == [(clone.tap, True)]
        assert not hyper.list(NODE)[clone.instance_id].paused
        if isinstance(hyper, LibvirtHypervisor):
            nic = live_xml(hyper, clone).find("devices/interface")
            assert (nic.find("mac").get("address"), nic.find("target").get("dev")) == (clone.mac, clone.tap)
            # the device itself has the clone's MAC (one restored from the
            # template's stream would keep the template's)
            assert [n["main-mac"] for n in qmp(hyper, clone.name, "query-rx-filter")] == [clone.mac]
            assert "master cfbr-hvtest" in next(x for x in links(node_net.netns).splitlines()
                                                if f" {clone.tap}:" in x)
    finally:
        hyper.destroy(clone.name)

    def refuse(tap):
        raise RuntimeError(f"cannot attach {tap}")
    with pytest.raises(RuntimeError, match="cannot attach"):
        hyper.restore_clone(path, clone, attach=refuse)
    assert hyper.list(NODE) == {}


def test_a_failing_read_of_the_master_pauses_the_domain_and_is_reported(libvirtd, spec_for):
    """The libvirt driver's half of the storage failover: a read of the
    overlay's NBD backing that fails (here every read: blkdebug under the
    export) pauses the domain instead of failing the guest's request
    (domain.py's error policy), list() says it is paused by an I/O error,
    and watch_domains hears of it. (The fake's disks never fail.)"""
    from cowfleet.agents.compute.sessions import stop_session_daemon
    hyper = LibvirtHypervisor("qemu:///system", "qemu")
    d = _workdir("cowfleet-ioerr-")
    master, sock, pidfile = d / "master.qcow2", d / "nbd.sock", d / "qsd.pid"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(master), "64M"], check=True)
    subprocess.run(["qemu-io", "-c", "write 0 1M", str(master)], check=True, capture_output=True)
    failing = ('{"driver":"blkdebug","node-name":"dbg","image":"f",'
               '"inject-error":[{"event":"read_aio","errno":5}]}')   # each data read of the qcow2: EIO
    subprocess.run(["qemu-storage-daemon", "--blockdev", f"driver=file,filename={master},node-name=f,read-only=on",
                    "--blockdev", failing, "--blockdev", "driver=qcow2,file=dbg,node-name=base,read-only=on",
                    "--nbd-server", f"addr.type=unix,addr.path={sock}",
                    "--export", "type=nbd,id=e,node-name=base,name=img,writable=off",
                    "--pidfile", str(pidfile), "--daemonize"], check=True)
    heard = []
    try:
        sock.chmod(0o666)                     # libvirt's qemu runs as another user
        spec = spec_for()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        f"nbd+unix:///img?socket={sock}", spec.disk_path], check=True)
        hyper.watch_domains(heard.append, lambda name: None)
        hyper.start(spec)                     # the firmware reads the boot sector at once
        info = wait_until(lambda: (i := hyper.list(NODE)[spec.instance_id]).io_error and i, 60,
                          "paused by the I/O error")
        assert info.paused and info.running
        wait_until(lambda: spec.name in heard, 10, "the I/O error event")
        assert hyper.destroy(spec.name)
    finally:
        for iid in hyper.list(NODE):
            hyper.destroy(domain_name(NODE, iid))
        if pidfile.exists():
            stop_session_daemon(int(pidfile.read_text()))
        shutil.rmtree(d, ignore_errors=True)


def test_a_domain_whose_qemu_dies_is_reported_stopped(libvirtd, spec_for):
    """watch_domains' ``stopped``: a guest's qemu killed -9 (a crash) is
    heard at once, so the agent starts the instance again without waiting
    for its next round. (The fake's domains never stop by themselves.)"""
    hyper = LibvirtHypervisor("qemu:///system", "qemu")
    stopped = []
    hyper.watch_domains(lambda name: None, stopped.append)
    spec = spec_for()
    try:
        hyper.start(spec)
        pid = int(Path(f"/run/libvirt/qemu/{spec.name}.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: spec.name in stopped, 30, "the stopped event")
        info = hyper.list(NODE).get(spec.instance_id)
        assert info is None or not info.running
    finally:
        hyper.destroy(spec.name)
