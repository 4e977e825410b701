"""Per-instance qcow2 overlays on the compute node's local disk.

Creating one never reads the master: qemu-img only records the backing file
(20-40 ms whatever the image size).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from cowfleet.agents.compute.files import InstanceFileStore
from cowfleet.agents.compute.sessions import qcow2_backing


class OverlayError(RuntimeError):
    pass


class OverlayStore(InstanceFileStore):
    suffix = ".qcow2"

    def create(self, group: str, instance_id: str, backing: str, backing_format: str) -> Path:
        self._folder(group)
        path = self.path(group, instance_id)
        self.layer(path, backing, backing_format)
        return path

    @staticmethod
    def layer(path: Path, backing: str, backing_format: str) -> None:
        """A qcow2 overlay at ``path`` on ``backing`` (an instance's, or a
        warm-clone template's layer), whole or not at all."""
        tmp = path.with_suffix(".partial")
        proc = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", backing, str(tmp)],
            capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise OverlayError(f"qemu-img create failed: {proc.stderr.strip()}")
        os.replace(tmp, path)   # an overlay exists whole or not at all

    def rebase(self, path: Path, backing: str, backing_format: str) -> None:
        """Point a (persistent) overlay at another export of the same master:
        only the name in its header changes (``-u``: the content is the same,
        so nothing is read or copied)."""
        proc = subprocess.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", backing_format,
                               "-b", backing, str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise OverlayError(f"qemu-img rebase failed: {proc.stderr.strip()}")

    @staticmethod
    def backing(path: Path) -> str | None:
        """The backing file an overlay names (e.g. a template's layer)."""
        return qcow2_backing(path)

    def destroy_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class FakeOverlayStore(OverlayStore):
    """Empty files in place of qcow2 overlays (with the fake hypervisor,
    nothing reads them): same layout and life-cycle, no qemu-img."""

    @staticmethod
    def layer(path: Path, backing: str, backing_format: str) -> None:
        path.write_text(f"fake overlay backed by {backing} ({backing_format})\n")

    @staticmethod
    def backing(path: Path) -> str | None:
        try:
            text = Path(path).read_text()
        except OSError:
            return None
        _, found, rest = text.partition("fake overlay backed by ")
        return rest.rpartition(" (")[0] or None if found else None

    def rebase(self, path: Path, backing: str, backing_format: str) -> None:
        path.write_text(f"fake overlay backed by {backing} ({backing_format})\n")
