"""Warm-clone templates on a compute node (issue 13): one per image session
and flavor, made on first use, reused by every clone, removed when unused.

A template is a folder ``<root>/<key>/`` holding

    meta.json      what it is of: session key (image, sha256), flavor, its size
    disk.qcow2     the template layer: an overlay on the image's session,
                   frozen read-only once saved (master -> template layer ->
                   each clone's overlay, so disk and memory agree)
    memory.save    libvirt's save image of the template guest, taken at its
                   template marker (cowfleet/guest/builder.py), before any identity
    console.log    the template guest's console (diagnostics)

It is made in ``<root>/.making-<key>-<random>/`` and renamed into place
whole: a folder named by its key is complete. A half-made one (an agent
killed while making it) is swept at the agent's start with the template
domain it may have left (templates' domains are named under their own node,
``<node>~tmpl``, so the agent's instance reconcile never sees them).

Keys carry the image's session key (name + sha256, and the session's
generation after a storage failover) and the flavor's vCPUs and memory:
an image or flavor change asks for another key, and the old template goes
when no clone uses it (``prune``). A save image that does not read back
(corrupt, foreign, another libvirt) is never restored: restore_clone
raises SaveImageError and the caller boots cold and drops the template.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cowfleet.agents.compute.domain import DomainSpec
from cowfleet.agents.compute.hypervisor import Hypervisor, domain_name
from cowfleet.agents.compute.savefile import SaveImage, SaveImageError
from cowfleet.faults import fault_point
from cowfleet.guest.builder import TEMPLATE_MARKER

log = logging.getLogger(__name__)

MAKING = ".making-"
# one template of the demo guest: 95.7 MB of save image and a few MB of
# disk layer (design.md, "Warm clones"); 8 of them by default
DEFAULT_CAP_BYTES = 1 << 30
# an unused template is kept this long after its last clone was made (a group
# scaled down and up again, or deleted and made again, reuses it), then goes
DEFAULT_IDLE_S = 3600.0


class TemplateError(RuntimeError):
    """No template could be made: the caller boots cold."""


@dataclass(frozen=True)
class Template:
    key: str
    session: str            # the image session its disk layer is backed by
    vcpus: int
    memory_mib: int
    folder: Path
    image: str = ""         # the image's name and content it was made of
    sha256: str = ""

    @property
    def disk(self) -> Path:
        return self.folder / "disk.qcow2"

    @property
    def save(self) -> Path:
        return self.folder / "memory.save"

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())


def template_key(session: str, vcpus: int, memory_mib: int) -> str:
    return f"{session}--{int(vcpus)}c{int(memory_mib)}m"


# make_layer(path, backing, backing_format): an overlay at path (OverlayStore.layer)
MakeLayer = Callable[[Path, str, str], None]


class TemplateStore:
    def __init__(self, root: str | os.PathLike, hyper: Hypervisor, node: str, make_layer: MakeLayer,
                 cap_bytes: int = DEFAULT_CAP_BYTES, boot_timeout: float = 600.0,
                 idle_s: float = DEFAULT_IDLE_S):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)       # qemu runs unprivileged: it traverses to the files
        self.hyper = hyper
        self.owner = node                # the agent's node (its fault points name it)
        self.node = f"{node}~tmpl"      # templates' domains: apart from the instances'
        self.make_layer = make_layer
        self.cap_bytes = cap_bytes
        self.idle_s = idle_s
        self.boot_timeout = boot_timeout
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._using: dict[str, int] = {}          # key -> clones being made of it right now

    @contextlib.contextmanager
    def using(self, key: str, touch: bool = True):
        """Around making a clone's overlay: yields the template (None: there
        is none), which ``prune`` leaves alone meanwhile; after that the
        clone's overlay on disk says it is used (prune reads the overlays
        under the same lock as this count, so no removal slips between)."""
        with self._locks_lock:
            self._using[key] = self._using.get(key, 0) + 1
            template = self.get(key, touch)
        try:
            yield template
        finally:
            with self._locks_lock:
                self._using[key] -= 1
                if not self._using[key]:
                    del self._using[key]

    def lock(self, key: str) -> threading.Lock:
        """Held while a template is made or removed: one maker per key."""
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    # -- what is on disk ----------------------------------------------------------
    def _read(self, folder: Path) -> Template | None:
        try:
            meta = json.loads((folder / "meta.json").read_text())
            return Template(key=meta["key"], session=meta["session"], vcpus=int(meta["vcpus"]),
                            memory_mib=int(meta["memory_mib"]), folder=folder, image=meta.get("image", ""),
                            sha256=meta.get("sha256", ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def list(self) -> dict[str, Template]:
        """key -> complete template."""
        out = {}
        for folder in self.root.iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                t = self._read(folder)
                if t is not None and t.key == folder.name:
                    out[t.key] = t
        return out

    def session_keys(self) -> set[str]:
        """The image sessions templates use, those being made included (the
        agent keeps these sessions: every clone's disk reads through one)."""
        keys = set()
        for folder in self.root.iterdir():
            t = self._read(folder) if folder.is_dir() else None
            if t is not None:
                keys.add(t.session)
        return keys

    def get(self, key: str, touch: bool = True) -> Template | None:
        """The complete template of ``key``, marked as used now (LRU) unless
        ``touch`` is False (a warm spare made of it is no use by a clone)."""
        folder = self.root / key
        t = self._read(folder)
        if t is None or t.key != key or not t.save.exists():
            return None
        if touch:
            os.utime(folder)
        return t

    def of_overlay_backing(self, backing: str | None) -> str | None:
        """The key of the template a clone's overlay is backed by, if any."""
        if not backing:
            return None
        p = Path(backing)
        return p.parent.name if p.parent.parent == self.root and p.name == "disk.qcow2" else None

    # -- making -------------------------------------------------------------------
    def make(self, key: str, session: str, backing: str, backing_format: str, vcpus: int,
             memory_mib: int, timeout: float | None = None, image: str = "", sha256: str = "") -> Template:
        """Cold boot the image as a template (no seed, no NIC), wait for its
        template marker, save it and freeze its disk layer; the folder
        appears whole or not at all. Call under :meth:`lock` of ``key``."""
        existing = self.get(key)
        if existing is not None:
            return existing
        tid = f"t{secrets.token_hex(4)}"
        folder = self.root / f"{MAKING}{tid}"
        folder.mkdir()
        os.chmod(folder, 0o755)
        name = domain_name(self.node, tid)
        t0 = time.monotonic()
        try:
            (folder / "meta.json").write_text(json.dumps(
                {"key": key, "session": session, "vcpus": vcpus, "memory_mib": memory_mib,
                 "image": image, "sha256": sha256}))
            disk = folder / "disk.qcow2"
            self.make_layer(disk, backing, backing_format)
            console = folder / "console.log"
            spec = DomainSpec(name=name, instance_id=tid, group="templates",
                              node=self.node, vcpus=vcpus, memory_mib=memory_mib, disk_path=str(disk),
                              console_log=str(console), virt_type=self.hyper.virt_type, network="none",
                              template=True)
            self.hyper.start(spec)
            fault_point("template.booting", self.owner)
            self._wait_for_marker(console, name, timeout or self.boot_timeout)
            self.hyper.save_template(name, folder / "memory.save")
            os.chmod(disk, 0o444)           # frozen: the saved memory is of this disk
            fault_point("template.saved", self.owner)
            os.replace(folder, self.root / key)
        except BaseException as exc:
            self.hyper.destroy(name)
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, (TemplateError, SaveImageError, OSError)):
                raise TemplateError(f"making template {key} failed: {exc}") from exc
            raise
        log.info("template %s made in %.1f s", key, time.monotonic() - t0)
        return self._read(self.root / key)

    def _wait_for_marker(self, console: Path, name: str, timeout: float) -> None:
        # the guest's console is a file qemu appends to: polled, as the
        # agent's readiness loop polls instances' consoles
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if TEMPLATE_MARKER in console.read_text(errors="replace"):
                    return
            except FileNotFoundError:
                pass
            if not any(d.name == name for d in self.hyper.list(self.node).values()):
                raise TemplateError(f"the template domain {name} stopped before its marker")
            time.sleep(0.2)
        raise TemplateError(f"no template marker from {name} in {timeout:.0f} s "
                            "(an image without the warm-clone contract?)")

    # -- removing -----------------------------------------------------------------
    def remove(self, key: str) -> bool:
        """Remove a template (a clone restored from it keeps running: its
        disk layer is unlinked but open; call when no clone uses it)."""
        folder = self.root / key
        if not folder.exists():
            return False
        gone = self.root / f"{MAKING}gone-{key}-{secrets.token_hex(3)}"
        os.replace(folder, gone)             # the key disappears at once, whole
        shutil.rmtree(gone, ignore_errors=True)
        return True

    def prune(self, in_use: Callable[[], set[str]], current: Callable[[Template], bool]) -> list[str]:
        """Remove templates no clone uses (``in_use()``: the keys clones'
        overlays on disk are backed by, read at each removal) that are stale
        (``current`` says no: their image session is not the one new
        instances get) or idle (no clone made of them for ``idle_s``), then
        the least recently used unused ones while all of them take more than
        the cap. Returns the keys removed."""
        removed = []
        templates = self.list()
        idle_since = time.time() - self.idle_s
        for key, t in templates.items():
            stale = not current(t) or t.folder.stat().st_mtime < idle_since
            if stale and self._remove_unused(key, in_use):
                removed.append(key)
        left = [t for k, t in templates.items() if k not in removed]
        sizes = {t.key: t.size() for t in left}
        total = sum(sizes.values())
        for t in sorted(left, key=lambda t: t.folder.stat().st_mtime):
            if total <= self.cap_bytes:
                break
            if self._remove_unused(t.key, in_use):
                removed.append(t.key)
                total -= sizes[t.key]
        return removed

    def _remove_unused(self, key: str, in_use: Callable[[], set[str]]) -> bool:
        lock = self.lock(key)
        if not lock.acquire(blocking=False):
            return False                  # being made right now
        try:
            with self._locks_lock:        # no clone starts on it meanwhile (using)
                if key in self._using or key in in_use():
                    return False
                return self.remove(key)
        finally:
            lock.release()

    def sweep(self) -> list[str]:
        """At the agent's start: template domains and half-made folders
        left by an agent that died making one. Returns what was removed."""
        removed = []
        for info in self.hyper.list(self.node).values():
            self.hyper.destroy(info.name)
            removed.append(info.name)
        for folder in self.root.iterdir():
            if folder.name.startswith(MAKING):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
            elif folder.is_dir() and self._read(folder) is None:
                shutil.rmtree(folder, ignore_errors=True)       # not ours, or unreadable
                removed.append(folder.name)
        return removed

    def check(self, template: Template) -> None:
        """Raise SaveImageError if the template's save image does not read
        back as one libvirt wrote of our domain."""
        SaveImage.read(template.save)
