"""Read-only iSCSI exports of master images through the machine's ``tgtd``.

tgtd is one daemon per machine, shared by every storage agent on it (in the
tests several agents share one). So that agents never touch each other's
targets:

- a target's IQN names its owner: ``iqn.2026-11.org.cowfleet:<node>:<image>-<sha12>``
  (stable for a given node, image and content), and an agent only ever lists,
  creates or deletes targets under its own ``...:<node>:`` prefix;
- target ids are chosen under a machine-wide file lock (the lowest free tid),
  so two agents creating targets at once cannot pick the same one.

All of it drives ``tgtadm`` (tgt's own tool), nothing else.
``TgtExporter`` is the storage agent's exporter (``exporter.py``) on it.

Where one machine plays several storage hosts (the racks lab: one network
namespace per node), each node runs a tgtd of its own in its namespace, so
its portal is the node's own address; ``COWFLEET_TGT_CONTROL_PORT`` names
that tgtd's management channel (``tgtd -C N``, socket ``/run/tgtd/socket.N``).
Unset, the machine's tgtd (channel 0) is meant.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field

from cowfleet.agents.storage.exporter import IQN_PREFIX, ExportError, Exporter, iqn_for, node_prefix

__all__ = ["IQN_PREFIX", "iqn_for", "node_prefix", "TgtError", "Target", "TgtExporter", "available",
           "control_args", "export", "list_targets", "parse_targets", "remove_node_targets", "unexport"]

log = logging.getLogger(__name__)

LOCK_FILE = os.environ.get("COWFLEET_TGT_LOCK", "/run/lock/cowfleet-tgt.lock")
DEFAULT_PORT = 3260

_TARGET = re.compile(r"^Target (\d+): (\S+)\s*$")
_BACKING = re.compile(r"^\s+Backing store path: (.+?)\s*$")
_NEXUS = re.compile(r"^\s+I_T nexus: \d+")


class TgtError(ExportError):
    pass


@dataclass
class Target:
    tid: int
    iqn: str
    backing: list[str] = field(default_factory=list)   # LUN backing files (LUN 0 has none)
    sessions: int = 0                                  # connected initiators


def control_args(port: int | str | None = None) -> list[str]:
    """The arguments naming a tgtd's management channel, for tgtadm and for
    tgtd itself: ``port``, else $COWFLEET_TGT_CONTROL_PORT (see the module's
    doc); none for the machine's tgtd (channel 0)."""
    if port is None:
        port = os.environ.get("COWFLEET_TGT_CONTROL_PORT", "")
    return ["-C", str(port)] if port else []


def _tgtadm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["tgtadm", *control_args(), "--lld", "iscsi", *args], capture_output=True,
                          text=True, timeout=30)
    if check and proc.returncode != 0:
        raise TgtError(f"tgtadm {' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def available() -> bool:
    try:
        return _tgtadm("--op", "show", "--mode", "sys", check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def parse_targets(text: str) -> list[Target]:
    out: list[Target] = []
    for line in text.splitlines():
        m = _TARGET.match(line)
        if m:
            out.append(Target(int(m.group(1)), m.group(2)))
            continue
        if not out:
            continue
        m = _BACKING.match(line)
        if m and m.group(1) != "None":
            out[-1].backing.append(m.group(1))
        elif _NEXUS.match(line):
            out[-1].sessions += 1
    return out


def list_targets(prefix: str = "") -> list[Target]:
    """Targets on this machine whose IQN starts with ``prefix``."""
    text = _tgtadm("--op", "show", "--mode", "target").stdout
    return [t for t in parse_targets(text) if t.iqn.startswith(prefix)]


@contextmanager
def _machine_lock():
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    with open(LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export(iqn: str, path: str) -> int:
    """Export ``path`` read-only as LUN 1 of target ``iqn``; idempotent.
    A target of that IQN with another backing file is replaced."""
    with _machine_lock():
        targets = list_targets()
        for t in targets:
            if t.iqn == iqn:
                if t.backing == [path]:
                    return t.tid
                log.warning("target %s exports %s, not %s: re-creating it", iqn, t.backing, path)
                _delete(t.tid)
                targets.remove(t)
        used = {t.tid for t in targets}
        tid = next(i for i in range(1, len(used) + 2) if i not in used)
        _tgtadm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
        try:
            _tgtadm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1", "-b", path)
            _tgtadm("--op", "update", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1",
                    "--params", "readonly=1")
            _tgtadm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
        except TgtError:
            _delete(tid)
            raise
        log.info("exported %s as %s (tid %d)", path, iqn, tid)
        return tid


def _delete(tid: int) -> None:
    _tgtadm("--op", "delete", "--mode", "target", "--force", "--tid", str(tid), check=False)


def unexport(iqn: str) -> bool:
    """Remove target ``iqn`` (and its LUN), even with initiators connected."""
    with _machine_lock():
        for t in list_targets():
            if t.iqn == iqn:
                _delete(t.tid)
                log.info("removed target %s (tid %d)", iqn, t.tid)
                return True
    return False


def remove_node_targets(node: str) -> int:
    """Every target owned by ``node`` (lab tear-down, tests)."""
    n = 0
    for t in list_targets(node_prefix(node)):
        n += unexport(t.iqn)
    return n


class TgtExporter(Exporter):
    """The node's targets in the machine's tgtd (the functions above, so the
    same tgtadm commands); tgtd not answering (no tgtadm, a timeout) is an
    ExportError like a refusal."""

    def export(self, iqn: str, path: str) -> None:
        with _answering():
            export(iqn, path)

    def unexport(self, iqn: str) -> bool:
        with _answering():
            return unexport(iqn)

    def list(self) -> dict[str, list[str]]:
        with _answering():
            return {t.iqn: t.backing for t in list_targets(node_prefix(self.node))}


@contextmanager
def _answering():
    try:
        yield
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(str(exc)) from exc
