"""Libvirt domain XML for one instance, checked by parsing it."""
from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest

from cowfleet.agents.compute.domain import METADATA_NS, DomainSpec, domain_xml, seed_disk_xml
from cowfleet.guest.builder import SEED_WAIT_SERIAL, UEVENT_HELPER


def spec(**over) -> DomainSpec:
    base = dict(name="cowfleet-web-0a1b2c", instance_id="web-0a1b2c", group="web", node="c1",
                vcpus=2, memory_mib=256, disk_path="/var/lib/cowfleet/overlays/web-0a1b2c.qcow2",
                console_log="/var/lib/cowfleet/console/web-0a1b2c.log")
    base.update(over)
    return DomainSpec(**base)


def parse(s: DomainSpec) -> ET.Element:
    return ET.fromstring(domain_xml(s))


def test_root_and_name():
    root = parse(spec())
    assert root.tag == "domain"
    assert root.findtext("name") == "cowfleet-web-0a1b2c"


def test_default_virt_type_is_qemu_without_host_cpu():
    root = parse(spec())
    assert root.get("type") == "qemu"
    assert root.find("cpu") is None


def test_kvm_domain_uses_host_passthrough():
    root = parse(spec(virt_type="kvm"))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"


@pytest.mark.parametrize("virt_type", ["xen", "KVM", "", "qemu' foo='bar", "lxc"])
def test_invalid_virt_type(virt_type):
    with pytest.raises(ValueError, match="virt_type"):
        domain_xml(spec(virt_type=virt_type))


@pytest.mark.parametrize("network", ["routed", "default", "", "User", "network"])
def test_invalid_network(network):
    with pytest.raises(ValueError, match="network"):
        domain_xml(spec(network=network))


@pytest.mark.parametrize("vcpus, mem", [(1, 128), (2, 512), (16, 65536)])
def test_memory_and_vcpus(vcpus, mem):
    root = parse(spec(vcpus=vcpus, memory_mib=mem))
    memory = root.find("memory")
    assert memory.get("unit") == "MiB"
    assert int(memory.text) == mem
    assert int(root.findtext("vcpu")) == vcpus


def test_disk_is_the_qcow2_overlay_on_virtio():
    s = spec()
    disks = parse(s).findall("devices/disk")
    assert len(disks) == 1
    disk = disks[0]
    assert disk.get("type") == "file" and disk.get("device") == "disk"
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("driver").get("name") == "qemu"
    assert disk.find("source").get("file") == s.disk_path
    assert disk.find("target").get("bus") == "virtio"
    assert disk.find("target").get("dev") == "vda"


def test_the_guest_has_the_hosts_entropy():
    # without it the guest's first /dev/urandom read waited ~1 s under TCG
    rngs = parse(spec()).findall("devices/rng")
    assert [r.get("model") for r in rngs] == ["virtio"]
    backend = rngs[0].find("backend")
    assert backend.get("model") == "random" and backend.text == "/dev/urandom"


def test_serial_console_goes_to_console_log():
    s = spec()
    root = parse(s)
    serial = root.find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == s.console_log
    console = root.find("devices/console")
    assert console.get("type") == "file"
    assert console.find("source").get("path") == s.console_log
    assert console.find("target").get("type") == "serial"


def test_network_none_has_no_interface():
    assert parse(spec(network="none")).findall("devices/interface") == []


def test_network_user_has_one_user_interface():
    ifaces = parse(spec(network="user")).findall("devices/interface")
    assert len(ifaces) == 1
    assert ifaces[0].get("type") == "user"
    assert ifaces[0].find("model").get("type") == "virtio"


def test_default_network_is_user():
    assert parse(spec()).find("devices/interface").get("type") == "user"


def test_smbios_serial_is_instance_id():
    root = parse(spec(instance_id="web-ffeedd"))
    entries = {e.get("name"): e.text for e in root.findall("sysinfo/system/entry")}
    assert root.find("sysinfo").get("type") == "smbios"
    assert entries["serial"] == "web-ffeedd"
    assert root.find("os/smbios").get("mode") == "sysinfo"


def test_metadata_carries_id_group_node():
    root = parse(spec(instance_id="g-123456", group="g", node="compute-7"))
    found = root.findall(f"metadata/{{{METADATA_NS}}}instance")
    assert len(found) == 1
    assert METADATA_NS == "urn:cowfleet:instance:1"
    inst = found[0]
    assert (inst.get("id"), inst.get("group"), inst.get("node")) == ("g-123456", "g", "compute-7")


def test_xml_special_characters_are_escaped():
    nasty = "/var/tmp/a&b<c>'d\"e/ov.qcow2"
    log = "/var/tmp/<log> & 'x'.log"
    s = spec(name="n&<'\">", instance_id="i&<>'\"", group="g\"'&", node="n<>&",
             disk_path=nasty, console_log=log)
    root = parse(s)
    assert root.findtext("name") == s.name
    assert root.find("devices/disk/source").get("file") == nasty
    assert root.find("devices/serial/source").get("path") == log
    assert root.find("devices/console/source").get("path") == log
    inst = root.find(f"metadata/{{{METADATA_NS}}}instance")
    assert (inst.get("id"), inst.get("group"), inst.get("node")) == (s.instance_id, s.group, s.node)
    serial = [e.text for e in root.findall("sysinfo/system/entry") if e.get("name") == "serial"]
    assert serial == [s.instance_id]


def test_injection_through_a_path_is_not_possible():
    evil = "/x'/><disk type='file'><source file='/etc/shadow'/></disk><x a='"
    root = parse(spec(disk_path=evil))
    assert len(root.findall("devices/disk")) == 1
    assert root.find("devices/disk/source").get("file") == evil


def test_pure_and_deterministic():
    s = spec()
    assert domain_xml(s) == domain_xml(dataclasses.replace(s))


def test_bridge_interface_with_mac_on_the_nodes_bridge():
    root = parse(spec(network="bridge", bridge="cfbr-1234abcd", mac="02:aa:bb:cc:dd:ee"))
    ifaces = root.findall("devices/interface")
    assert len(ifaces) == 1 and ifaces[0].get("type") == "bridge"
    assert ifaces[0].find("source").get("bridge") == "cfbr-1234abcd"
    assert ifaces[0].find("mac").get("address") == "02:aa:bb:cc:dd:ee"
    assert ifaces[0].find("model").get("type") == "virtio"


def test_bridge_network_needs_a_bridge():
    with pytest.raises(ValueError, match="bridge"):
        domain_xml(spec(network="bridge"))


def test_tap_interface_is_an_ethernet_nic_on_the_named_tap():
    """An agent in another network namespace than libvirtd: libvirt makes the
    tap (of the agent's name), joins no bridge, and the agent attaches it."""
    root = parse(spec(network="tap", tap="cft-0123456789", bridge="cfbr-1234abcd", mac="02:aa:bb:cc:dd:ee"))
    ifaces = root.findall("devices/interface")
    assert len(ifaces) == 1 and ifaces[0].get("type") == "ethernet"
    assert ifaces[0].find("target").get("dev") == "cft-0123456789"
    assert ifaces[0].find("source") is None, "libvirt must not look for a bridge"
    assert ifaces[0].find("mac").get("address") == "02:aa:bb:cc:dd:ee"
    assert ifaces[0].find("model").get("type") == "virtio"


@pytest.mark.parametrize("tap", [None, "", "cft-0123456789ab", "cft 1", "cft'/>", "täp"])
def test_tap_network_needs_a_valid_tap_name(tap):
    with pytest.raises(ValueError, match="tap"):
        domain_xml(spec(network="tap", tap=tap))


def test_tap_names_fit_linux_and_differ_per_instance():
    from cowfleet.agents.compute.network import tap_name
    names = {tap_name(f"web-{i:06x}") for i in range(1000)}
    assert len(names) == 1000
    assert all(n.startswith("cft-") and len(n) == 14 for n in names)
    assert tap_name("web-0a1b2c") == tap_name("web-0a1b2c")
    domain_xml(spec(network="tap", tap=tap_name("web-0a1b2c")))


def test_seed_is_a_second_read_only_disk():
    root = parse(spec(seed_path="/var/lib/cowfleet/seeds/web/web-0a1b2c.iso"))
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]
    seed = disks[1]
    assert seed.find("source").get("file").endswith("web-0a1b2c.iso")
    assert seed.find("readonly") is not None and disks[0].find("readonly") is None
    assert seed.find("driver").get("type") == "raw"


def test_a_spares_seed_placeholder_is_marked_for_the_guest_and_writable():
    # the waiting guest ignores a disk with this serial until it grows; qemu grows only a writable one
    el = ET.fromstring(seed_disk_xml(spec(seed_path="/x/s1.seed"), placeholder=True))
    assert el.findtext("serial") == SEED_WAIT_SERIAL and el.find("readonly") is None
    assert el.find("target").get("dev") == "vdb"
    assert SEED_WAIT_SERIAL in UEVENT_HELPER and "RESIZE" in UEVENT_HELPER


def test_no_seed_no_second_disk():
    assert len(parse(spec()).findall("devices/disk")) == 1


def test_a_template_has_a_generation_id_to_be_made_anew():
    assert parse(spec()).find("genid") is None
    genid = parse(spec(genid=True)).find("genid")
    assert genid is not None and not genid.text     # libvirt makes one at each start and restore


def test_the_overlay_disk_pauses_the_guest_on_an_io_error_instead_of_failing_its_request():
    """A session re-pointed to another replica fails the reads in flight:
    the guest is paused (and resumed by the agent), never given the error."""
    disk = next(d for d in parse(spec()).findall("devices/disk") if d.find("target").get("dev") == "vda")
    driver = disk.find("driver")
    assert (driver.get("error_policy"), driver.get("rerror_policy")) == ("stop", "stop")
