"""Files a compute node keeps per instance (overlays, seeds): one folder per
group, one file per instance, written whole (a ``.partial`` renamed) and
removed with the instance."""
from __future__ import annotations

import os
from pathlib import Path


class InstanceFileStore:
    suffix = ""          # e.g. ".qcow2"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # libvirt's qemu runs as an unprivileged user: it must traverse to the files
        os.chmod(self.root, 0o755)

    def path(self, group: str, instance_id: str) -> Path:
        return self.root / group / f"{instance_id}{self.suffix}"

    def _folder(self, group: str) -> Path:
        folder = self.root / group
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)
        return folder

    def adopt(self, group: str, instance_id: str, source: Path) -> Path:
        """Move ``source`` (e.g. a claimed warm spare's overlay, open in its
        qemu, which keeps it) to the instance's path."""
        self._folder(group)
        path = self.path(group, instance_id)
        os.replace(source, path)
        return path

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
        """instance id -> (group, path) for every file on disk, whole or partial."""
        out = {}
        for path in self.root.glob(f"*/*{self.suffix}"):
            out[path.stem] = (path.parent.name, path)
        for path in self.root.glob("*/*.partial"):
            out.setdefault(path.stem, (path.parent.name, path))
        return out
