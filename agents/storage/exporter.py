"""The exporter interface: how a storage node makes a master attachable.

An exporter serves read-only iSCSI targets for one node: export a master as
LUN 1 of a target, unexport it, list the node's targets, and say whether it
answers at all. Two implementations sit behind it and pass one contract
suite (tests/integration/test_exporters.py): the machine's tgtd
(``tgt.TgtExporter``, what storage nodes run) and :class:`FakeExporter`
(targets in memory, for the racks lab's ``--fake`` mode, where no compute
node attaches anything and a tgtd per storage node is only a cost).

A target's name (IQN) is the same whoever exports it: it names the owning
node, the image and its content, and it is what replica records carry.
"""
from __future__ import annotations

import abc
import os
import threading

IQN_PREFIX = "iqn.2026-11.org.cowfleet"


class ExportError(RuntimeError):
    """The exporter did not do what was asked, or did not answer."""


def node_prefix(node: str) -> str:
    return f"{IQN_PREFIX}:{node}:"


def iqn_for(node: str, image: str, sha256: str) -> str:
    """Stable for (node, image, content); names its owner."""
    return f"{node_prefix(node)}{image}-{sha256[:12]}"


class Exporter(abc.ABC):
    """The read-only iSCSI targets of one node (``node``); never another's."""

    def __init__(self, node: str):
        self.node = node

    def target_name(self, image: str, sha256: str) -> str:
        return iqn_for(self.node, image, sha256)

    @abc.abstractmethod
    def export(self, iqn: str, path: str) -> None:
        """Export ``path`` read-only as LUN 1 of target ``iqn``; idempotent.
        A target of that name with another backing file is replaced. On
        failure (ExportError) no target of that name is left."""

    @abc.abstractmethod
    def unexport(self, iqn: str) -> bool:
        """Remove target ``iqn``, even with initiators connected; False if
        there was none."""

    @abc.abstractmethod
    def list(self) -> dict[str, list[str]]:
        """This node's targets: IQN -> backing files of its LUNs."""

    def check(self) -> None:
        """Raise ExportError unless the exporter answers (its health)."""
        self.list()


class FakeMachine:
    """What one fake tgtd holds (IQN -> master), shared like a machine's
    tgtd by the exporters of several nodes. ``stop()`` plays a dead tgtd
    (its targets gone, every call failing) until ``start()``."""

    def __init__(self):
        self.targets: dict[str, str] = {}
        self.lock = threading.Lock()
        self.running = True

    def stop(self) -> None:
        with self.lock:
            self.running = False
            self.targets.clear()

    def start(self) -> None:
        with self.lock:
            self.running = True


class FakeExporter(Exporter):
    """Targets in memory (a ``FakeMachine`` of its own unless given one):
    nothing can attach them."""

    def __init__(self, node: str, machine: FakeMachine | None = None):
        super().__init__(node)
        self.machine = machine or FakeMachine()

    def _answer(self) -> None:
        if not self.machine.running:
            raise ExportError("the fake exporter is stopped")

    def export(self, iqn: str, path: str) -> None:
        with self.machine.lock:
            self._answer()
            if not os.path.isfile(path):       # tgtadm refuses a missing backing file too
                self.machine.targets.pop(iqn, None)
                raise ExportError(f"cannot export {path}: no such file")
            self.machine.targets[iqn] = path

    def unexport(self, iqn: str) -> bool:
        with self.machine.lock:
            self._answer()
            return self.machine.targets.pop(iqn, None) is not None

    def list(self) -> dict[str, list[str]]:
        with self.machine.lock:
            self._answer()
            return {iqn: [path] for iqn, path in self.machine.targets.items()
                    if iqn.startswith(node_prefix(self.node))}
