"""The copy store: a storage node's read-only masters on its disk.

``images/NAME.img`` (mode 0444) is a copy; ``NAME.sha256`` beside it (the
sidecar) holds "<sha256> <origin>", the origin naming the image record the
copy was made for (``replication.origin``). A copy is written to a
``*.partial`` file first -- hashed while it is written, never all in memory,
zero chunks left as holes -- checked, and only then put in place, so a copy
under its real name is always whole. Files only: which copies to keep is
``replication.py``'s question, ZooKeeper is ``publisher.py``'s.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from cowfleet.checksum import SHA256_RE as SHA256_HEX
from cowfleet.checksum import file_sha256   # the one file-hash helper (the agent hashes a copy without sidecar)

__all__ = ["CHUNK", "ChecksumMismatch", "CopyStore", "FormatMismatch", "check_format", "file_sha256"]

CHUNK = 1 << 20


class ChecksumMismatch(ValueError):
    pass


class FormatMismatch(ValueError):
    pass


def check_format(path: Path, declared: str) -> None:
    """The data must be what the image says it is: qemu-img's probe of a
    qcow2 master says qcow2 (and names no backing file: a master stands
    alone), of a raw one says raw -- else instances would fail to boot, or
    boot a qcow2 container as a raw disk."""
    try:
        proc = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True,
                              text=True, timeout=120)
        info = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:     # no qemu-img, or it hung
        raise FormatMismatch(f"the data's format could not be checked: {type(exc).__name__}: {exc}")
    if info is None:
        raise FormatMismatch(f"qemu-img cannot read the data: {proc.stderr.strip()[:300]}")
    found = info.get("format")
    if found != declared:
        raise FormatMismatch(f"the data is {found}, not the declared {declared}")
    # a master stands alone: no backing file, no external data file (either
    # would make a compute host's qemu open a path of that host)
    external = info.get("backing-filename") or \
        ((info.get("format-specific") or {}).get("data") or {}).get("data-file")
    if external:
        raise FormatMismatch(f"a qcow2 master must stand alone; this one refers to '{external}'")


class CopyStore:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)

    def path(self, name: str) -> Path:
        return self.root / f"{name}.img"

    def names(self) -> list[str]:
        """The images with a copy here (verified or not)."""
        return [p.stem for p in self.root.glob("*.img")]

    def info(self, name: str) -> tuple[str | None, str | None]:
        """(sha256, origin) of a copy, from its sidecar: the origin is the
        image record's ``created_at`` when the copy was made, so a copy of an
        image deleted and created anew under the same name is never taken for
        the new one's. Sidecars of older versions hold only the sha256."""
        try:
            words = self.path(name).with_suffix(".sha256").read_text().split()
        except OSError:
            return None, None
        if not words or not SHA256_HEX.match(words[0]):
            return None, None          # torn or foreign: as if there were none
        return words[0], (words[1] if len(words) > 1 else None)

    def write_sidecar(self, name: str, sha: str, origin: str) -> None:
        """``NAME.sha256`` beside the copy: "<sha256> <origin>", written whole or not at all."""
        sidecar = self.path(name).with_suffix(".sha256")
        tmp = sidecar.with_name(f"{name}.{uuid.uuid4().hex[:8]}.sidecar.partial")
        try:
            with open(tmp, "w") as fh:
                fh.write(f"{sha} {origin}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, sidecar)
        finally:
            tmp.unlink(missing_ok=True)

    def discard(self, name: str) -> None:
        path = self.path(name)
        path.unlink(missing_ok=True)
        path.with_suffix(".sha256").unlink(missing_ok=True)

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size

    def chunks(self, name: str) -> Iterator[bytes]:
        with open(self.path(name), "rb") as fh:
            yield from iter(lambda: fh.read(CHUNK), b"")

    @contextmanager
    def receive(self, name: str, chunks: Iterable[bytes], expected_sha: str | None,
                declared_format: str) -> Iterator[tuple[Path, str, int]]:
        """Write a new copy of ``name`` from ``chunks`` into a partial file,
        check its checksum (ChecksumMismatch) and format (FormatMismatch) and
        make it read-only; yields (partial, sha256, size) for ``install``.
        The partial file is gone on exit, whatever happened."""
        tmp = self.root / f"{name}.{uuid.uuid4().hex[:8]}.partial"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    if chunk == bytes(len(chunk)):
                        out.seek(len(chunk), os.SEEK_CUR)   # zeros: a hole (sparse masters stay sparse)
                    else:
                        out.write(chunk)
                out.truncate(size)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            if expected_sha and expected_sha != sha:
                raise ChecksumMismatch(f"checksum mismatch: expected {expected_sha}, got {sha}")
            check_format(tmp, declared_format)
            os.chmod(tmp, 0o444)                        # masters are read-only
            yield tmp, sha, size
        finally:
            tmp.unlink(missing_ok=True)

    def install(self, partial: Path, name: str, sha: str, origin: str) -> None:
        """Put a received copy in place of ``name``'s."""
        path = self.path(name)
        # no sidecar while the file changes: a crash here leaves a copy
        # the agent hashes and checks against the record
        path.with_suffix(".sha256").unlink(missing_ok=True)
        os.replace(partial, path)
        self.write_sidecar(name, sha, origin)

    def partials(self) -> list[tuple[str, Path]]:
        """(image name, file) of every partial file (copies and sidecars being written)."""
        return [(p.name.split(".")[0], p) for p in self.root.glob("*.partial")]

    def capacity(self) -> dict[str, int]:
        st = os.statvfs(self.root)
        return {"disk_mib": st.f_blocks * st.f_frsize // (1 << 20)}

    def allocated(self) -> dict[str, int]:
        used = sum(p.stat().st_size for p in self.root.glob("*.img"))
        return {"disk_mib": used // (1 << 20), "images": len(list(self.root.glob("*.img")))}
