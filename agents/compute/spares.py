"""Warm spares (issue 13): clones restored from a template ahead of any
instance, left paused, each claimed whole by an instance's start.

A restore is most of a clone's cost (measured under TCG: 0.45-0.50 core-s
of a clone's ~1.2, and the same qemu start a cold boot pays), so with a
restore per start a group cannot be running sooner than a bare boot
creates its domains. A spare pays it before the PUT: a start that finds
one renames the spare's overlay and console to the instance's, sets the
domain's metadata to the instance (it keeps its name: libvirt renames no
running domain) and resumes it -- the same wake as a clone restored for
it, its identity all its own, with no hot-plug left at the claim. The NIC
is the spare's own, plugged when it was made (the spare ran until its
guest's driver took it: a third of a wake's CPU, paid ahead); its MAC,
unique to the spare, becomes the instance's. So is the seed's disk: a
placeholder (2 MiB of zeros, whose serial tells the guest to wait on),
plugged when the spare was made; the claim writes the instance's seed into
it and grows it, and the guest wakes on the resize (builder.UEVENT_HELPER).

A spare is ``<root>/<id>.qcow2`` (an overlay on its template's frozen
layer), ``<root>/<id>.log`` (its console), ``<root>/<id>.seed`` (its
seed placeholder) and a paused domain named under
the node ``<node>~spare`` (``cf-<node>~spare--<id>``), whose metadata group
is its template's key. Spares hold memory while no instance uses it, so
the agent keeps them only in the node's unallocated capacity, a few per
template (``--warm-spares``), makes them one at a time while the node has
nothing to start or wait for, and drops them when their template goes
stale or idle. An agent's start destroys whatever spares an earlier life
left (a spare is cheap to make again; a half-claimed one is no instance).
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cowfleet.agents.compute.domain import DomainSpec
from cowfleet.agents.compute.hypervisor import Hypervisor, domain_name
from cowfleet.agents.compute.network import tap_name
from cowfleet.agents.compute.overlays import OverlayStore
from cowfleet.agents.compute.templates import Template, TemplateStore
from cowfleet.faults import fault_point
from cowfleet.network import mac_for

log = logging.getLogger(__name__)

# A seed placeholder's size: a seed with the most user data the API takes
# (64 KiB) and SSH keys is an ISO of well under 1 MiB.
PLACEHOLDER_BYTES = 2 << 20


@dataclass(frozen=True)
class Spare:
    id: str
    key: str                 # its template's
    name: str                # its domain's
    vcpus: int
    memory_mib: int
    disk: Path
    console: Path
    mac: str | None = None   # its NIC's, plugged when it was made: the claiming instance's
    tap: str | None = None   # with a tap NIC: the tap's name
    seed: Path | None = None  # its seed placeholder, plugged when it was made


class SparePool:
    def __init__(self, root: str | os.PathLike, hyper: Hypervisor, node: str, overlays: OverlayStore,
                 templates: TemplateStore, per_template: int = 0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)       # qemu runs unprivileged: it traverses to the files
        self.hyper = hyper
        self.owner = node
        self.node = f"{node}~spare"      # unclaimed spares' domains: apart from the instances'
        self.overlays = overlays
        self.templates = templates
        self.per_template = per_template
        self._spares: dict[str, Spare] = {}      # id -> an unclaimed spare
        self._lock = threading.Lock()

    # -- what there is ------------------------------------------------------------
    def count(self) -> dict[str, int]:
        """template key -> unclaimed spares."""
        with self._lock:
            return dict(Counter(s.key for s in self._spares.values()))

    def held(self) -> tuple[int, int]:
        """(vCPUs, MiB of memory) the unclaimed spares hold."""
        with self._lock:
            return (sum(s.vcpus for s in self._spares.values()),
                    sum(s.memory_mib for s in self._spares.values()))

    def template_keys(self) -> set[str]:
        """The templates spares' disks are backed by, from the files (a
        half-made spare's included): ``TemplateStore.prune`` keeps these."""
        keys = set()
        for disk in self.root.glob("*.qcow2"):
            key = self.templates.of_overlay_backing(self.overlays.backing(disk))
            if key:
                keys.add(key)
        return keys

    # -- making, taking, dropping ---------------------------------------------
    def make(self, template: Template, virt_type: str, network: str = "none", bridge: str | None = None,
             attach=None, seed: bool = True) -> Spare:
        """One spare of ``template``, paused, with a NIC of its own on
        ``network`` (DomainSpec's: a tap one is given to ``attach``) and,
        if ``seed``, a seed placeholder. Raises, leaving nothing, if it
        cannot be made (e.g. a save image that does not read back)."""
        sid = f"s{secrets.token_hex(4)}"
        disk, console = self.root / f"{sid}.qcow2", self.root / f"{sid}.log"
        placeholder = self.root / f"{sid}.seed" if seed else None
        nic = network != "none"
        spec = DomainSpec(name=domain_name(self.node, sid), instance_id=sid, group=template.key, node=self.node,
                          vcpus=template.vcpus, memory_mib=template.memory_mib, disk_path=str(disk),
                          console_log=str(console), virt_type=virt_type, network=network, bridge=bridge,
                          tap=tap_name(sid) if network == "tap" else None, mac=mac_for(sid) if nic else None,
                          seed_path=str(placeholder) if placeholder else None)
        try:
            self.overlays.layer(disk, str(template.disk), "qcow2")
            if placeholder is not None:
                with open(placeholder, "wb") as fh:       # sparse zeros: read as no file system
                    fh.truncate(PLACEHOLDER_BYTES)
                os.chmod(placeholder, 0o644)
            self.hyper.restore_spare(template.save, spec, attach)
            fault_point("spare.made", self.owner)
        except BaseException:
            self.hyper.destroy(spec.name)
            self._unlink(disk, console, *([placeholder] if placeholder else []))
            raise
        spare = Spare(id=sid, key=template.key, name=spec.name, vcpus=template.vcpus,
                      memory_mib=template.memory_mib, disk=disk, console=console, mac=spec.mac, tap=spec.tap,
                      seed=placeholder)
        with self._lock:
            self._spares[sid] = spare
        return spare

    def take(self, key: str) -> Spare | None:
        """An unclaimed spare of template ``key``, now the caller's alone."""
        with self._lock:
            for sid, s in self._spares.items():
                if s.key == key:
                    return self._spares.pop(sid)
        return None

    def claim(self, spare: Spare, spec: DomainSpec, group: str, attach=None) -> None:
        """Make the (taken) spare instance ``spec`` of ``group``: its overlay
        and console renamed to the instance's paths, the instance's seed
        written into its placeholder (then the instance's seed file), then
        the domain's identity set and the placeholder grown (Hypervisor.claim_spare).
        Raises, leaving no domain, if that fails; the instance's overlay
        may then be left at its path (the caller's to remove or replace)."""
        try:
            try:
                os.replace(spare.console, spec.console_log)    # qemu keeps writing to it, now the instance's
            except FileNotFoundError:
                pass                     # nothing written to it yet
            self.overlays.adopt(group, spec.instance_id, spare.disk)
            if spare.seed is not None and spec.seed_path:
                # the instance's seed written into the placeholder the guest
                # has, which then becomes the instance's seed file
                data = Path(spec.seed_path).read_bytes()
                if len(data) > PLACEHOLDER_BYTES:
                    raise ValueError(f"the seed ({len(data)} bytes) is larger than spare {spare.id}'s placeholder")
                with open(spare.seed, "r+b") as fh:
                    fh.write(data)
                os.replace(spare.seed, spec.seed_path)
            fault_point("spare.moved", self.owner)
            self.hyper.claim_spare(spare.name, spec, attach)
        except BaseException:
            self.hyper.destroy(spare.name)
            self._unlink(*self._files(spare))
            raise

    def drop(self, spare: Spare) -> None:
        self.hyper.destroy(spare.name)
        self._unlink(*self._files(spare))

    @staticmethod
    def _files(spare: Spare) -> list[Path]:
        return [spare.disk, spare.console] + ([spare.seed] if spare.seed else [])

    def trim(self, keep: dict[str, int]) -> list[Spare]:
        """Drop unclaimed spares beyond ``keep`` (template key -> how many
        may stay; a key not in it keeps none). Returns those dropped."""
        with self._lock:
            dropped, kept = [], {}
            for sid, s in list(self._spares.items()):
                kept[s.key] = kept.get(s.key, 0) + 1
                if kept[s.key] > keep.get(s.key, 0):
                    dropped.append(self._spares.pop(sid))
        for s in dropped:
            self.drop(s)
        return dropped

    def sweep(self) -> list[str]:
        """At the agent's start: every spare an earlier life left, with its
        domain (a claim interrupted before the domain's metadata was the
        instance's leaves an unclaimed spare too). Returns what went."""
        removed = []
        for info in self.hyper.list(self.node).values():
            self.hyper.destroy(info.name)
            removed.append(info.name)
        for f in self.root.iterdir():
            f.unlink(missing_ok=True)
            removed.append(f.name)
        with self._lock:
            self._spares.clear()
        return removed

    @staticmethod
    def _unlink(*paths: Path) -> None:
        for p in paths:
            p.unlink(missing_ok=True)
            p.with_suffix(".partial").unlink(missing_ok=True)
