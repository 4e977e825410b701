"""Per-instance qcow2 overlays on the compute node's local disk.

Creating one never reads the master: qemu-img only records the backing file
(20-40 ms whatever the image size).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class OverlayError(RuntimeError):
    pass


class OverlayStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # libvirt's qemu runs as an unprivileged user: it must traverse to the files
        os.chmod(self.root, 0o755)

    def path(self, group: str, instance_id: str) -> Path:
        return self.root / group / f"{instance_id}.qcow2"

    def create(self, group: str, instance_id: str, backing: str, backing_format: str) -> Path:
        path = self.path(group, instance_id)
        path.parent.mkdir(exist_ok=True)
        os.chmod(path.parent, 0o755)
        tmp = path.with_suffix(".partial")
        proc = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", backing, str(tmp)],
            capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise OverlayError(f"qemu-img create failed: {proc.stderr.strip()}")
        os.replace(tmp, path)   # an overlay exists whole or not at all
        return path

    def rebase(self, path: Path, backing: str, backing_format: str) -> None:
        """Point a (persistent) overlay at another export of the same master:
        only the name in its header changes (``-u``: the content is the same,
        so nothing is read or copied)."""
        proc = subprocess.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", backing_format,
                               "-b", backing, str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise OverlayError(f"qemu-img rebase failed: {proc.stderr.strip()}")

    def remove(self, group: str, instance_id: str) -> bool:
        path = self.path(group, instance_id)
        existed = path.exists()
        path.unlink(missing_ok=True)
        path.with_suffix(".partial").unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass
        return existed

    def list(self) -> dict[str, tuple[str, Path]]:
        """instance id -> (group, path) for every overlay on disk."""
        out = {}
        for path in self.root.glob("*/*.qcow2"):
            out[path.stem] = (path.parent.name, path)
        for path in self.root.glob("*/*.partial"):
            out.setdefault(path.stem, (path.parent.name, path))
        return out

    def destroy_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class FakeOverlayStore(OverlayStore):
    """Empty files in place of qcow2 overlays (with the fake hypervisor,
    nothing reads them): same layout and life-cycle, no qemu-img."""

    def create(self, group: str, instance_id: str, backing: str, backing_format: str) -> Path:
        path = self.path(group, instance_id)
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"fake overlay backed by {backing} ({backing_format})\n")
        return path

    def rebase(self, path: Path, backing: str, backing_format: str) -> None:
        path.write_text(f"fake overlay backed by {backing} ({backing_format})\n")
