"""The hypervisor interface the compute agent drives: the libvirt driver,
and a fake one for scale tests (hundreds of agents on one machine) behind the
same four calls, both run through the same contract tests."""
from __future__ import annotations

import abc
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable

from cowfleet.agents.compute.domain import (METADATA_KEY, METADATA_NS, DomainSpec, domain_xml, instance_metadata,
                                             interface_xml, seed_disk_xml)
from cowfleet.agents.compute.network import apart_from_libvirtd
from cowfleet.agents.compute.savefile import STREAM_MAGIC, Feeder, SaveImage, SaveImageError, clone_xml, write_image
from cowfleet.faults import fault_point
from cowfleet.guest.builder import READY_MARKER, SEED_WAIT_SERIAL, TEMPLATE_MARKER

log = logging.getLogger(__name__)


@dataclass
class DomainInfo:
    name: str
    instance_id: str
    group: str
    running: bool          # active (running or paused)
    paused: bool = False   # e.g. created paused by an agent that died before resuming it
    clone: bool = False    # paused and restored from a template (it has a generation ID): its NIC
                           # and seed may not be plugged yet, so it is not resumed but started anew
    io_error: bool = False  # paused by its disk's error policy (a read of the master failed)


# attach(tap): called while a domain with a tap NIC (DomainSpec network="tap")
# is paused, before it runs: the agent puts the tap on its bridge
Attach = Callable[[str], None]


class Hypervisor(abc.ABC):
    virt_type: str
    # True when the taps of domains appear in another network namespace than
    # this process's: the agent then gives domains a tap NIC and attaches it
    foreign_taps: bool = False

    @abc.abstractmethod
    def start(self, spec: DomainSpec, attach: Attach | None = None) -> None:
        """Run the domain. A tap NIC needs ``attach``: it is called with the
        tap's name between creating the domain paused and resuming it (if
        it raises, the domain is destroyed and the error raised)."""

    @abc.abstractmethod
    def destroy(self, name: str) -> bool: ...

    @abc.abstractmethod
    def resume(self, name: str, attach: Attach | None = None) -> None:
        """Resume a paused domain; ``attach`` first gets each of its taps
        (an agent may have died between creating it and attaching them)."""

    @abc.abstractmethod
    def list(self, node: str) -> dict[str, DomainInfo]:
        """instance id -> domain, for the domains of this node only."""

    def watch_domains(self, io_error: Callable[[str], None], stopped: Callable[[str], None]) -> None:
        """Call ``io_error(domain name)`` whenever a domain's disk reports an
        I/O error (and so, by its error policy, pauses it), ``stopped(domain
        name)`` whenever a domain stops (its qemu killed or crashed, the
        guest powered off, or destroyed). Of every domain on the host: the
        caller filters. The fake hypervisor's domains neither fail nor stop
        by themselves."""

    # -- warm clones (issue 13) ---------------------------------------------------

    @abc.abstractmethod
    def save_template(self, name: str, path: str | os.PathLike) -> SaveImage:
        """Save running domain ``name``'s memory and devices to ``path`` as
        a template (the domain stops: its disk, flushed, is now the
        template's and must not change). ``path`` appears whole or not at
        all. The domain needs a VM generation ID (DomainSpec.genid) and no
        NIC (network none: each clone gets its own hot-plugged)."""

    @abc.abstractmethod
    def restore_clone(self, template: str | os.PathLike, spec: DomainSpec,
                      attach: Attach | None = None) -> None:
        """Run ``spec`` from a template: the template's memory under
        ``spec``'s identity (name, new UUID and generation ID, metadata,
        disk, seed, console) and ``spec``'s NIC hot-plugged before it runs
        (a template has none), ``attach`` as in :meth:`start`.
        ``spec.disk_path`` must be an overlay on the template's frozen disk.
        Raises :class:`SaveImageError`, leaving no domain, when the template
        cannot be restored as ``spec`` (corrupt, foreign, other devices):
        the caller boots cold instead."""

    @abc.abstractmethod
    def restore_spare(self, template: str | os.PathLike, spec: DomainSpec, attach: Attach | None = None) -> None:
        """Restore ``spec`` from a template as a warm spare (spares.py), whose
        restore is paid before any instance asks for it: with ``spec``'s NIC
        (``attach`` as in :meth:`start`) and, if ``spec.seed_path``, a seed
        placeholder there (domain.seed_disk_xml) it runs until the guest's
        drivers have taken them, then pauses; with neither it stays paused.
        The guest waits for its instance's seed. Raises as
        :meth:`restore_clone`, leaving no domain."""

    @abc.abstractmethod
    def claim_spare(self, name: str, spec: DomainSpec, attach: Attach | None = None) -> None:
        """Make paused spare ``name`` the instance ``spec`` and run it: its
        metadata becomes ``spec``'s identity (it keeps its name: libvirt
        renames no running domain, so :meth:`name_of` says it), ``spec``'s
        NIC and seed are hot-plugged, ``attach`` as in :meth:`start`, and it
        resumes. The caller has moved its disk and console to ``spec``'s
        paths (qemu keeps its open files). A NIC the spare has already
        (``spec.mac``'s: restore_spare's) is kept, not plugged again; a seed
        placeholder, into which the caller wrote the seed (its file now at
        ``spec.seed_path``), is grown instead of a seed plugged, which wakes
        the guest. A domain that is not paused is left alone
        (SaveImageError); on any other error once it is claimed, it is
        destroyed and the error raised."""

    def name_of(self, node: str, instance_id: str) -> str:
        """The domain name of an instance: its own (domain_name), or the
        name of the spare it was claimed from."""
        return domain_name(node, instance_id)


_event_loop_lock = threading.Lock()
_event_loop_running = False


def _event_loop(lv) -> None:
    """libvirt's default event loop, in a thread of its own, once per
    process (libvirt-python has no other way to deliver events; registering
    it or running it twice is not supported)."""
    global _event_loop_running
    with _event_loop_lock:
        if _event_loop_running:
            return
        lv.virEventRegisterDefaultImpl()
        _event_loop_running = True

    def run():
        while True:
            try:
                lv.virEventRunDefaultImpl()
            except lv.libvirtError as exc:     # never ends the loop: every watch needs it
                log.warning("libvirt event loop: %s", exc)
                time.sleep(1)
    threading.Thread(target=run, name="libvirt-events", daemon=True).start()


def domain_name(node: str, instance_id: str) -> str:
    return f"cf-{node}--{instance_id}"


class LibvirtHypervisor(Hypervisor):
    """Transient libvirt domains: nothing survives in libvirt's config, so a
    host reboot leaves no stale definitions; a restarted agent adopts the
    running ones by their metadata."""

    def __init__(self, uri: str, virt_type: str):
        import libvirt  # imported here so unit tests run without libvirt
        self._libvirt = libvirt
        self.uri = uri
        self.virt_type = virt_type
        self._local = threading.local()
        self._identity: dict[str, tuple[str, str, str]] = {}   # domain UUID -> (node, id, group)
        self._names: dict[tuple[str, str], str] = {}            # (node, id) -> name, of claimed spares
        self._identity_lock = threading.Lock()
        self.foreign_taps = apart_from_libvirtd()
        libvirt.registerErrorHandler(lambda ctx, err: None, None)  # errors come as exceptions

    def _conn(self):
        # one connection per thread: destroying from parallel connections
        # measured 20x faster than one after another on a shared one
        conn = getattr(self._local, "conn", None)
        if conn is None or not conn.isAlive():
            conn = self._libvirt.open(self.uri)
            self._local.conn = conn
        return conn

    def start(self, spec: DomainSpec, attach: Attach | None = None) -> None:
        lv = self._libvirt
        if spec.network == "tap" and attach is None:
            raise ValueError("a domain with a tap NIC needs attach")
        # created paused and then resumed: measured 2x faster for bursts
        dom = self._conn().createXML(domain_xml(spec), lv.VIR_DOMAIN_START_PAUSED)
        fault_point("start.paused", spec.node)
        if spec.network == "tap":
            try:
                attach(spec.tap)
            except BaseException:
                try:
                    dom.destroy()
                except lv.libvirtError:
                    pass
                raise
        dom.resume()

    def destroy(self, name: str) -> bool:
        lv = self._libvirt
        try:
            dom = self._conn().lookupByName(name)
        except lv.libvirtError as exc:
            if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                return False
            raise
        try:
            dom.destroy()
        except lv.libvirtError as exc:
            if exc.get_error_code() not in (lv.VIR_ERR_NO_DOMAIN, lv.VIR_ERR_OPERATION_INVALID):
                raise
        try:  # a persistent definition would only come from outside; remove it too
            dom.undefine()
        except lv.libvirtError:
            pass
        return True

    def resume(self, name: str, attach: Attach | None = None) -> None:
        dom = self._conn().lookupByName(name)
        if attach is not None:
            for tap in taps_of(dom.XMLDesc(0)):
                attach(tap)
        dom.resume()

    def list(self, node: str) -> dict[str, DomainInfo]:
        # one RPC for every domain's state (getAllDomainStats) instead of three
        # a domain: the agent lists on every round, and on a host busy booting
        # guests each libvirt call is slow. A domain's identity (its metadata)
        # never changes, so it is read once per domain (by UUID).
        lv = self._libvirt
        # the node's own names, its templates' and spares' (cf-<node>~spare--,
        # which claimed become instances of the node): told apart by metadata
        prefix = f"cf-{node}"
        out, seen, names = {}, set(), set()
        for dom, stats in self._conn().getAllDomainStats(lv.VIR_DOMAIN_STATS_STATE):
            uuid = dom.UUIDString()
            seen.add(uuid)
            name = dom.name()
            names.add(name)
            if not name.startswith(prefix):
                continue
            with self._identity_lock:
                ident = self._identity.get(uuid)
            if ident is None:
                try:
                    el = ET.fromstring(dom.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS))
                except lv.libvirtError:
                    continue        # not ours, or destroyed while we looked
                ident = (el.get("node"), el.get("id"), el.get("group"))
                with self._identity_lock:     # a claim's entry, written meanwhile, wins: it is newer
                    ident = self._identity.setdefault(uuid, ident)
            if ident[0] != node:
                continue
            state = stats.get("state.state", lv.VIR_DOMAIN_NOSTATE)
            paused = state == lv.VIR_DOMAIN_PAUSED
            io_error = paused and stats.get("state.reason") == lv.VIR_DOMAIN_PAUSED_IOERROR
            try:      # only a paused one's XML is read: rare (an interrupted start)
                # a clone paused by an I/O error is a running guest: the failover's, not a restart's
                clone = paused and not io_error and ET.fromstring(dom.XMLDesc(0)).find("genid") is not None
            except lv.libvirtError:
                clone = False
            out[ident[1]] = DomainInfo(name=name, instance_id=ident[1], group=ident[2],
                                       running=state != lv.VIR_DOMAIN_SHUTOFF, paused=paused, clone=clone,
                                       io_error=io_error)
        with self._identity_lock:      # forget domains gone from the host
            for uuid in set(self._identity) - seen:
                del self._identity[uuid]
            # a claimed spare's name goes with its domain (not merely because
            # this listing began before its claim and so lacks its instance)
            for key in [k for k, n in self._names.items() if k[0] == node and n not in names]:
                del self._names[key]
            self._names.update({(node, iid): d.name for iid, d in out.items()
                                if d.name != domain_name(node, iid)})
        return out

    def name_of(self, node: str, instance_id: str) -> str:
        with self._identity_lock:
            return self._names.get((node, instance_id)) or domain_name(node, instance_id)

    def watch_domains(self, io_error: Callable[[str], None], stopped: Callable[[str], None]) -> None:
        """libvirt's I/O error and lifecycle events, on a connection of their
        own (opened again if libvirtd restarts: its keepalive notices a dead
        one), delivered by libvirt's default event loop (_event_loop)."""
        lv = self._libvirt
        _event_loop(lv)

        def on_io_error(_conn, dom, *_args):
            io_error(dom.name())

        def on_lifecycle(_conn, dom, event, _detail, _opaque):
            if event == lv.VIR_DOMAIN_EVENT_STOPPED:
                stopped(dom.name())

        def keep():
            conn = None
            while True:
                try:
                    if conn is None or not conn.isAlive():
                        conn = lv.open(self.uri)
                        conn.setKeepAlive(5, 3)
                        conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, on_io_error,
                                                    None)
                        conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None)
                except lv.libvirtError as exc:
                    log.warning("libvirt domain events: %s; opening again in 2 s", exc)
                    conn = None
                time.sleep(2)
        threading.Thread(target=keep, name="libvirt-events-conn", daemon=True).start()

    def save_template(self, name: str, path: str | os.PathLike) -> SaveImage:
        path = os.fspath(path)
        tmp = path + ".partial"
        dom = self._conn().lookupByName(name)
        _fit_for_template(name, ET.fromstring(dom.XMLDesc(0)))
        # libvirt writes its header as "partial" until the stream is whole;
        # the rename makes the name appear only for a whole, checked file
        dom.save(tmp)
        try:
            image = SaveImage.read(tmp)
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
        return dataclasses.replace(image, path=path)

    def restore_clone(self, template: str | os.PathLike, spec: DomainSpec,
                      attach: Attach | None = None, copy: bool = False) -> None:
        """``copy``: restore from a whole copy of the image with the clone's
        header instead of a FIFO (the fallback, and the baseline the FIFO
        was measured against in bench/clone_restore.py)."""
        if spec.network == "tap" and attach is None:
            raise ValueError("a domain with a tap NIC needs attach")
        self._restore_paused(template, spec, copy)
        fault_point("start.paused", spec.node)   # as a started one: adopted and resumed alike
        self._wake(self._conn().lookupByName(spec.name), spec, attach)

    def restore_spare(self, template: str | os.PathLike, spec: DomainSpec, attach: Attach | None = None) -> None:
        lv = self._libvirt
        if spec.network == "tap" and attach is None:
            raise ValueError("a domain with a tap NIC needs attach")
        self._restore_paused(template, spec)
        if spec.network == "none" and not spec.seed_path:
            return
        # A hot-plug is most of a clone's wake under TCG (the guest's ACPI
        # PCI hotplug and driver probe: 0.25-0.32 core-s for the NIC, about
        # as much for the seed's disk): a spare pays both before any
        # instance asks. It runs until its guest's drivers have them, then
        # waits paused; the instance that claims it gets this NIC, its MAC
        # the instance's, and its seed written into the placeholder.
        try:
            dom = self._conn().lookupByName(spec.name)
            if spec.network != "none":
                dom.attachDeviceFlags(interface_xml(spec), lv.VIR_DOMAIN_AFFECT_LIVE)
            if spec.seed_path:
                dom.attachDeviceFlags(seed_disk_xml(spec, placeholder=True), lv.VIR_DOMAIN_AFFECT_LIVE)
            if spec.network == "tap":
                attach(spec.tap)
            dom.resume()
            deadline = time.monotonic() + SPARE_PLUG_TIMEOUT
            while not _drivers_ok(dom):
                if time.monotonic() > deadline:
                    raise SaveImageError(f"the guest of spare {spec.name} took not its devices in "
                                         f"{SPARE_PLUG_TIMEOUT:.0f} s")
                time.sleep(0.05)
            dom.suspend()
        except BaseException:
            self.destroy(spec.name)
            raise

    def claim_spare(self, name: str, spec: DomainSpec, attach: Attach | None = None) -> None:
        lv = self._libvirt
        if spec.network == "tap" and attach is None:
            raise ValueError("a domain with a tap NIC needs attach")
        dom = self._conn().lookupByName(name)
        if dom.state()[0] != lv.VIR_DOMAIN_PAUSED:       # left alone: it may be an instance now
            raise SaveImageError(f"spare {name} is not paused: it may have been claimed")
        try:
            # live only: the domain is transient; a restarted agent reads it back (list)
            dom.setMetadata(lv.VIR_DOMAIN_METADATA_ELEMENT, instance_metadata(spec, prefixed=False), METADATA_KEY,
                            METADATA_NS, lv.VIR_DOMAIN_AFFECT_LIVE)
            with self._identity_lock:
                self._identity[dom.UUIDString()] = (spec.node, spec.instance_id, spec.group)
                self._names[(spec.node, spec.instance_id)] = name
            fault_point("start.paused", spec.node)   # an instance's domain now, paused: as a restored clone
            devices = ET.fromstring(dom.XMLDesc(0)).find("devices")
            has_nic = spec.mac is not None and devices.find(f"interface/mac[@address='{spec.mac}']") is not None
            placeholder = any(d.findtext("serial") == SEED_WAIT_SERIAL for d in devices.findall("disk"))
            if placeholder and spec.seed_path:
                # grown while paused: the guest's kernel says so (a change
                # uevent, RESIZE=1) when it runs, and reads the seed
                dom.blockResize("vdb", os.path.getsize(spec.seed_path) + SEED_GROWTH,
                                lv.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        except BaseException:
            self.destroy(name)
            raise
        self._wake(dom, spec, attach, nic=not has_nic, seed=not placeholder)

    def _restore_paused(self, template: str | os.PathLike, spec: DomainSpec, copy: bool = False) -> None:
        """``spec`` restored from the template, paused (no NIC, no seed)."""
        lv = self._libvirt
        image = SaveImage.read(template)
        xml = clone_xml(image.xml, spec)
        # libvirt 9.0 opens the save file once, reads the header and hands
        # qemu the descriptor at the stream: a FIFO fed the clone's header
        # and then the template's stream restores it with no copy of the
        # memory (savefile.py)
        folder = tempfile.mkdtemp(prefix=".restore-", dir=os.path.dirname(os.path.abspath(template)))
        source = os.path.join(folder, "image")
        feeder = None
        try:
            if copy:
                image.write_copy(source, xml)
            else:
                os.mkfifo(source, 0o600)
                feeder = Feeder(image, source, xml)
                feeder.start()
            try:
                self._conn().restoreFlags(source, None, lv.VIR_DOMAIN_SAVE_PAUSED)
            except lv.libvirtError as exc:
                raise SaveImageError(f"libvirt refused to restore {template} as {spec.name}: "
                                     f"{exc.get_error_message()}") from exc
            finally:
                if feeder is not None:
                    feeder.cancel()
            if feeder is not None and feeder.error is not None:   # libvirt took the domain, not the stream
                self.destroy(spec.name)
                raise SaveImageError(f"feeding {template} to {spec.name} failed: {feeder.error}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _wake(self, dom, spec: DomainSpec, attach: Attach | None, nic: bool = True, seed: bool = True) -> None:
        """A paused clone's NIC and seed plugged (unless ``nic``, ``seed`` is
        False: it has it), then resumed (destroyed on error)."""
        lv = self._libvirt
        try:
            if nic and spec.network != "none":
                # hot-plugged while paused: the guest finds it when it runs
                # (ACPI PCI hotplug), a new device with the clone's own MAC
                dom.attachDeviceFlags(interface_xml(spec), lv.VIR_DOMAIN_AFFECT_LIVE)
            if seed and spec.seed_path:
                # after the NIC: the seed's block device wakes the waiting
                # template guest, which then looks for the NIC it names
                dom.attachDeviceFlags(seed_disk_xml(spec), lv.VIR_DOMAIN_AFFECT_LIVE)
            if nic and spec.network == "tap":
                attach(spec.tap)
            dom.resume()
        except BaseException:
            self.destroy(dom.name())
            raise


# a spare's guest takes its NIC and placeholder in ~0.5 s under TCG when idle: this is for a busy host
SPARE_PLUG_TIMEOUT = 60.0
# how much a claim grows a seed placeholder by (any growth wakes the guest)
SEED_GROWTH = 64 << 10


def qmp(dom, command: str, **arguments):
    """A QMP command's answer from a libvirt domain's qemu: what the devices
    really have, where libvirt's API and XML say what it asked for. libvirt
    marks a domain so asked as tainted (custom-monitor), which changes nothing."""
    import libvirt_qemu  # imported here, as libvirt is, so unit tests run without it
    cmd = {"execute": command, **({"arguments": arguments} if arguments else {})}
    return json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0))["return"]


def _drivers_ok(dom) -> bool:
    """Whether the domain's guest has the drivers of all its virtio NICs and
    disks up (DRIVER_OK in each device's status, which only the guest sets)."""
    paths = [d["path"] for d in qmp(dom, "x-query-virtio") if d["name"] in ("virtio-net", "virtio-blk")]
    return all("DRIVER_OK" in str(qmp(dom, "x-query-virtio-status", path=p)["status"]) for p in paths)


def _fit_for_template(name: str, root: ET.Element) -> None:
    """Refuse to save a domain no clone could be made of (before saving:
    a save stops the domain)."""
    if root.find("devices/interface") is not None:
        raise SaveImageError(f"{name} has a NIC: a template has none (each clone's is hot-plugged)")
    if root.find("devices/disk/target[@dev='vdb']") is not None:
        raise SaveImageError(f"{name} has a seed: a template has none (each clone's is hot-plugged)")
    if root.find("genid") is None:
        raise SaveImageError(f"{name} has no VM generation ID: its clones would share one")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def taps_of(xml: str) -> list[str]:
    """The taps of a domain's tap NICs (interface type ethernet)."""
    root = ET.fromstring(xml)
    return [t.get("dev") for t in root.findall("devices/interface[@type='ethernet']/target") if t.get("dev")]


class FakeHypervisor(Hypervisor):
    """Domains that exist only in this process, for scale tests: hundreds of
    agents on one machine. A started domain is running at once and writes
    the guest's readiness line to its console log, so the agent's readiness
    path is the real one. Held in memory: a restarted agent finds none
    (as after a host reboot) and starts its assigned instances anew."""

    virt_type = "fake"

    def __init__(self):
        self._domains: dict[str, tuple[DomainSpec, bool]] = {}
        self._lock = threading.Lock()

    def start(self, spec: DomainSpec, attach: Attach | None = None) -> None:
        if spec.network == "tap" and attach is None:
            raise ValueError("a domain with a tap NIC needs attach")
        with self._lock:
            if spec.name in self._domains:
                raise RuntimeError(f"domain {spec.name} already exists")
            self._domains[spec.name] = (spec, True)
        if spec.network == "tap":        # no tap exists: attach only hears its name
            try:
                attach(spec.tap)
            except BaseException:
                self.destroy(spec.name)
                raise
        self.resume(spec.name)
        with open(spec.console_log, "a") as fh:   # a template waits for its clone's seed
            fh.write(f"fake guest {spec.instance_id}\n{TEMPLATE_MARKER if spec.template else READY_MARKER}\n")

    def destroy(self, name: str) -> bool:
        with self._lock:
            return self._domains.pop(name, None) is not None

    def resume(self, name: str, attach: Attach | None = None) -> None:
        with self._lock:
            spec, _ = self._domains[name]
        if attach is not None and spec.network == "tap":
            attach(spec.tap)
        with self._lock:
            self._domains[name] = (spec, False)

    def list(self, node: str) -> dict[str, DomainInfo]:
        with self._lock:
            return {spec.instance_id: DomainInfo(name=name, instance_id=spec.instance_id, group=spec.group,
                                                 running=True, paused=paused)
                    for name, (spec, paused) in self._domains.items() if spec.node == node}

    def save_template(self, name: str, path: str | os.PathLike) -> SaveImage:
        # a save image in libvirt's format with the domain's XML and a
        # token stream: restore_clone reads and checks it as the real one does
        with self._lock:
            spec, _ = self._domains[name]
        # the XML a qemu domain of this spec has (an agent's specs say "fake")
        xml = domain_xml(dataclasses.replace(spec, virt_type="qemu") if spec.virt_type == "fake" else spec)
        _fit_for_template(name, ET.fromstring(xml))
        path = os.fspath(path)
        # as libvirt keeps a domain's XML: with its UUID and generation ID
        xml = xml.replace("</name>", f"</name><uuid>{uuid.uuid4()}</uuid>", 1)
        xml = xml.replace("<genid/>", f"<genid>{uuid.uuid4()}</genid>", 1)
        write_image(path + ".partial", xml, STREAM_MAGIC + b"fake guest memory\n")
        os.replace(path + ".partial", path)
        self.destroy(name)
        return SaveImage.read(path)

    def restore_clone(self, template: str | os.PathLike, spec: DomainSpec,
                      attach: Attach | None = None) -> None:
        clone_xml(SaveImage.read(template).xml, spec)      # refused as the real one refuses
        self.start(spec, attach)

    def restore_spare(self, template: str | os.PathLike, spec: DomainSpec, attach: Attach | None = None) -> None:
        if spec.network == "tap" and attach is None:
            raise ValueError("a domain with a tap NIC needs attach")
        clone_xml(SaveImage.read(template).xml, spec)
        open(spec.console_log, "a").close()            # as qemu opens its console
        with self._lock:
            if spec.name in self._domains:
                raise RuntimeError(f"domain {spec.name} already exists")
            self._domains[spec.name] = (spec, True)
        if spec.network == "tap":
            try:
                attach(spec.tap)
            except BaseException:
                self.destroy(spec.name)
                raise

    def claim_spare(self, name: str, spec: DomainSpec, attach: Attach | None = None) -> None:
        if spec.network == "tap" and attach is None:
            raise ValueError("a domain with a tap NIC needs attach")
        with self._lock:
            got = self._domains.get(name)
            if got is None:
                raise RuntimeError(f"no domain {name}")
            if not got[1]:
                raise SaveImageError(f"spare {name} is not paused: it may have been claimed")
            self._domains[name] = (dataclasses.replace(spec, name=name), True)
            has_nic = spec.mac is not None and got[0].mac == spec.mac
        try:
            self.resume(name, None if has_nic else attach)
        except BaseException:
            self.destroy(name)
            raise
        with open(spec.console_log, "a") as fh:
            fh.write(f"fake clone {spec.instance_id}\n{READY_MARKER}\n")

    def name_of(self, node: str, instance_id: str) -> str:
        with self._lock:
            for name, (spec, _) in self._domains.items():
                if spec.node == node and spec.instance_id == instance_id:
                    return name
        return domain_name(node, instance_id)
