"""Libvirt domain XML for one instance (a pure function, unit-tested)."""
from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from cowfleet.guest.builder import SEED_WAIT_SERIAL, TEMPLATE_PRODUCT

METADATA_NS = "urn:cowfleet:instance:1"
METADATA_KEY = "cowfleet"


@dataclass(frozen=True)
class DomainSpec:
    name: str                 # libvirt domain name
    instance_id: str
    group: str
    node: str
    vcpus: int
    memory_mib: int
    disk_path: str            # the instance's qcow2 overlay
    console_log: str          # serial console, where the guest says it is ready
    virt_type: str = "qemu"   # kvm only where KVM really runs guests
    network: str = "user"     # bridge (the node's instance bridge), tap, user (qemu's slirp) or none
    bridge: str | None = None  # with network=bridge: the node's bridge
    tap: str | None = None     # with network=tap: the tap's name (libvirt makes it; the agent puts it
                               # on its bridge while the domain is paused: its namespace is not libvirtd's)
    mac: str | None = None     # the NIC's MAC (network-config matches on it)
    seed_path: str | None = None  # the NoCloud seed, attached read-only as the second disk
    genid: bool = False       # a VM generation ID (<genid/>): a template's, so that each of its
                              # clones gets a new one on restore (Linux reseeds its RNG from it)
    template: bool = False    # a warm-clone template (issue 13): a generation ID, and the SMBIOS
                              # product that makes the demo guest wait for its clone's seed


def instance_metadata(spec: DomainSpec, prefixed: bool = True) -> str:
    """Our metadata element: whose instance a domain is (how a restarted
    agent finds its domains, and how a claimed spare becomes an instance).
    ``prefixed`` False: bare, as libvirt's setMetadata takes it (it adds
    the namespace)."""
    attrs = f"id={quoteattr(spec.instance_id)} group={quoteattr(spec.group)} node={quoteattr(spec.node)}"
    if not prefixed:
        return f"<instance {attrs}/>"
    return f"<{METADATA_KEY}:instance xmlns:{METADATA_KEY}='{METADATA_NS}' {attrs}/>"


def seed_disk_xml(spec: DomainSpec, placeholder: bool = False) -> str:
    """The NoCloud seed's disk ("" without one): in a cold boot's domain
    XML, or hot-plugged into a warm clone after its restore. ``placeholder``:
    a warm spare's, plugged before any instance claims it, marked by its
    serial so that the waiting guest does not take it for a seed, and
    writable (qemu grows only a writable disk): the claim writes the seed
    into it and grows it, which wakes the guest (builder.UEVENT_HELPER)."""
    if not spec.seed_path:
        return ""
    mark = f"<serial>{SEED_WAIT_SERIAL}</serial>" if placeholder else "<readonly/>"
    return ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file={quoteattr(spec.seed_path)}/><target dev='vdb' bus='virtio'/>"
            f"{mark}</disk>")


def interface_xml(spec: DomainSpec) -> str:
    """The domain's NIC ("" for network none): in its domain XML, or
    hot-plugged into a warm clone after its restore."""
    mac = f"<mac address={quoteattr(spec.mac)}/>" if spec.mac else ""
    if spec.network == "bridge":
        return (f"<interface type='bridge'>{mac}<source bridge={quoteattr(spec.bridge)}/>"
                "<model type='virtio'/><rom enabled='no'/></interface>")
    if spec.network == "tap":
        # type ethernet: a tap libvirt makes and leaves alone (no bridge of its own to join)
        return (f"<interface type='ethernet'>{mac}<target dev={quoteattr(spec.tap)}/>"
                "<model type='virtio'/><rom enabled='no'/></interface>")
    if spec.network == "user":
        return f"<interface type='user'>{mac}<model type='virtio'/><rom enabled='no'/></interface>"
    return ""


# The overlay's reads of the master go to the host's image session over NBD.
# When that session is re-pointed to another replica (its storage node died,
# or its daemon), the reads in flight fail: with error_policy/rerror_policy
# 'stop' qemu pauses the guest instead of handing it an I/O error, libvirt
# says so (an I/O error event, paused reason ioerror), and the agent resumes
# it once the session reads again, when qemu retries the failed requests
# (ComputeAgent._failover). A write error of the overlay itself (its file
# system full) pauses the guest too, as oVirt does, rather than corrupting
# the guest's file systems.
#
# The virtio-rng (host /dev/urandom) is the guest kernel's entropy source, as
# clouds give it: without one, a Debian 6.1 guest under TCG waited ~1.0 s of
# jitter entropy at its first read of /dev/urandom -- the demo guest's first
# boot work took 1.18 s after a clone's wake, 0.18 s with it; a cold boot to
# ready 3.4 -> 2.3 s (issue 13, bench/README.md).
def domain_xml(spec: DomainSpec) -> str:
    if spec.virt_type not in ("kvm", "qemu"):
        raise ValueError(f"virt_type must be kvm or qemu, not {spec.virt_type!r}")
    if spec.network not in ("bridge", "tap", "user", "none"):
        raise ValueError(f"network must be bridge, tap, user or none, not {spec.network!r}")
    if spec.network == "bridge" and not spec.bridge:
        raise ValueError("network=bridge needs the bridge's name")
    if spec.network == "tap" and not (spec.tap and 1 <= len(spec.tap) <= 15 and spec.tap.isascii()
                                      and all(ch.isalnum() or ch in "-_" for ch in spec.tap)):
        raise ValueError("network=tap needs the tap's name (a Linux interface name: 1 to 15 of a-z0-9-_)")
    cpu = "<cpu mode='host-passthrough'/>" if spec.virt_type == "kvm" else ""
    net = interface_xml(spec)
    seed = seed_disk_xml(spec)
    return f"""<domain type='{spec.virt_type}'>
  <name>{escape(spec.name)}</name>{"<genid/>" if spec.genid or spec.template else ""}
  <metadata>
    {instance_metadata(spec)}
  </metadata>
  <memory unit='MiB'>{int(spec.memory_mib)}</memory>
  <vcpu>{int(spec.vcpus)}</vcpu>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>cowfleet</entry>
      <entry name='product'>{TEMPLATE_PRODUCT if spec.template else "cowfleet instance"}</entry>
      <entry name='serial'>{escape(spec.instance_id)}</entry>
    </system>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
    <smbios mode='sysinfo'/>
  </os>
  {cpu}
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap' error_policy='stop' rerror_policy='stop'/>
      <source file={quoteattr(spec.disk_path)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    {seed}
    {net}
    <serial type='file'>
      <source path={quoteattr(spec.console_log)}/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path={quoteattr(spec.console_log)}/>
      <target type='serial' port='0'/>
    </console>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
"""
