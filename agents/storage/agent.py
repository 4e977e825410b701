"""The storage agent: holds read-only master images and says so in ZooKeeper.

For each image it fetches a copy while the image has fewer replicas than it
asks for, verifies the checksum, and publishes an EPHEMERAL replica record
(gone with the agent, so the image's status is always the truth). Copies whose
image was deleted are discarded. At start it re-publishes what is on disk.
"""
from __future__ import annotations

import hashlib
import os
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from kazoo.exceptions import NodeExistsError, NoNodeError

from cowfleet.agents.node import NodeAgent
from cowfleet.models import Image, Replica
from cowfleet.zk import layout
from cowfleet.zk.connection import read, read_children, update

CHUNK = 1 << 20


class StorageAgent(NodeAgent):
    role = "storage"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.store = Path(self.state_dir) / "images"
        self.store.mkdir(parents=True, exist_ok=True)
        for d in (self.state_dir, self.store):
            os.chmod(d, 0o755)   # qemu (an unprivileged user) reads masters as backing files
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fetch")
        self.fetching: set[str] = set()
        self.fetch_lock = threading.Lock()

    def capacity(self):
        st = os.statvfs(self.store)
        return {"disk_mib": st.f_blocks * st.f_frsize // (1 << 20)}

    def allocated(self):
        used = sum(p.stat().st_size for p in self.store.glob("*.img"))
        return {"disk_mib": used // (1 << 20), "images": len(list(self.store.glob("*.img")))}

    def start(self) -> None:
        self.zk.ChildrenWatch(layout.IMAGES, lambda children: self.wake.set())

    def master_path(self, name: str) -> Path:
        return self.store / f"{name}.img"

    def reconcile(self) -> None:
        names = set(self.zk.get_children(layout.IMAGES))
        for name in names:
            got = read(self.zk, layout.image(name), Image)
            if got is None:
                continue
            image = got[0]
            mine = self.zk.exists(layout.image_replica(name, self.name))
            path = self.master_path(name)
            if mine:
                continue
            if path.exists():
                self._publish(image, path)
                continue
            replicas = read_children(self.zk, layout.image_replicas(name), Replica)
            if len(replicas) < image.min_replicas and image.source_url and not image.error:
                self._fetch_async(image)
        # copies whose image is gone
        for path in self.store.glob("*.img"):
            if path.stem not in names:
                self.log.info("discarding master of deleted image %s", path.stem)
                path.unlink(missing_ok=True)
                path.with_suffix(".sha256").unlink(missing_ok=True)
        for path in self.store.glob("*.partial"):
            if path.name.split(".")[0] not in names:
                path.unlink(missing_ok=True)

    def _fetch_async(self, image: Image) -> None:
        with self.fetch_lock:
            if image.name in self.fetching:
                return
            self.fetching.add(image.name)

        def run():
            try:
                self._fetch(image)
            except Exception as exc:
                self.log.exception("fetching image %s failed", image.name)
                self._record_error(image.name, f"fetch from {image.source_url} failed: {exc}")
            finally:
                with self.fetch_lock:
                    self.fetching.discard(image.name)
                self.wake.set()
        self.pool.submit(run)

    def _fetch(self, image: Image) -> None:
        path = self.master_path(image.name)
        tmp = path.with_suffix(".img.partial")
        digest = hashlib.sha256()
        size = 0
        url = urllib.parse.urlparse(image.source_url)
        with open(tmp, "wb") as out:
            if url.scheme == "file":
                with open(urllib.parse.unquote(url.path), "rb") as src:
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            else:
                with requests.get(image.source_url, stream=True, timeout=30) as resp:
                    resp.raise_for_status()
                    for chunk in resp.iter_content(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        if image.sha256 and image.sha256 != sha:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"checksum mismatch: expected {image.sha256}, got {sha}")
        os.chmod(tmp, 0o444)                        # masters are read-only
        path.with_suffix(".sha256").write_text(sha)
        os.replace(tmp, path)
        self.log.info("fetched image %s (%d bytes, sha256 %s)", image.name, size, sha[:12])
        self._publish(image, path)

    def _publish(self, image: Image, path: Path) -> None:
        sidecar = path.with_suffix(".sha256")
        sha = sidecar.read_text().strip() if sidecar.exists() else _sha256(path)
        size = path.stat().st_size

        def record(img: Image):
            if img.sha256 and img.sha256 != sha:
                return None
            if img.sha256 == sha and img.size_bytes == size and img.error is None:
                return None
            img.sha256, img.size_bytes, img.error = sha, size, None
            return img
        update(self.zk, layout.image(image.name), Image, record)
        got = read(self.zk, layout.image(image.name), Image)
        if got is None:
            return
        if got[0].sha256 != sha:
            self.log.warning("copy of %s does not match its checksum; discarding", image.name)
            path.unlink(missing_ok=True)
            return
        replica = Replica(node=self.name, rack=self.rack, path=str(path), sha256=sha, size_bytes=size)
        try:
            self.zk.create(layout.image_replica(image.name, self.name), replica.to_bytes(), ephemeral=True)
            self.log.info("serving a replica of %s", image.name)
        except (NodeExistsError, NoNodeError):
            pass

    def _record_error(self, name: str, message: str) -> None:
        def change(img: Image):
            img.error = message
            return img
        update(self.zk, layout.image(name), Image, change)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
