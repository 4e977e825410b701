"""The storage agent: holds read-only master images, exports each as a
read-only iSCSI LUN, and says so in ZooKeeper.

For each image it fetches a copy while the image has fewer replicas than it
asks for -- from the image's ``source_url``, or, for uploaded images, from a
peer storage agent that holds one -- verifies the checksum, exports it and
publishes an EPHEMERAL replica record with the portal and target (gone with
the agent, so the image's status is always the truth). Copies whose image
was deleted are discarded and unexported. At start, and on every round, its
targets are reconciled against what it holds: each copy exported once, no
target left over.

This class only wires rooms with one job each and runs the round:

- ``replication.py``  policy, no I/O: who copies, when to try again, which copy to keep or drop
- ``copy_store.py``   the copies on disk: streamed writes, sidecars, format check
- ``exporter.py``     the exporter interface and its fake; ``tgt.py`` the tgtd one
- ``exports.py``      the node's targets kept equal to its copies; the exporter's health
- ``publisher.py``    ZooKeeper: image records, replica records, errors
- ``fetch.py``        a copy's bytes from the ``source_url`` or a peer
- ``data_server.py``  P2P ``PUT``/``GET /v1/images/NAME/data`` (uploads, copies for peers)
- ``locate.py``       P2P ``/v1/holds``, ``/v1/rack-locate``, ``/v1/locate`` (where is an image?)
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from cowfleet.agents.node import NodeAgent
from cowfleet.agents.p2p_server import P2PServer
from cowfleet.agents.storage import fetch
from cowfleet.agents.storage.copy_store import CopyStore, file_sha256
from cowfleet.agents.storage.data_server import DataServer
from cowfleet.agents.storage.exporter import ExportError, Exporter
from cowfleet.agents.storage.exports import BACK, SLOW, WENT_DOWN, ExporterHealth, Exports
from cowfleet.agents.storage.locate import Locator, holds_answer
from cowfleet.agents.storage.publisher import Publisher
from cowfleet.agents.storage.replication import (DROP_EARLIER, DROP_UNKNOWN, LEARN_ORIGIN, Replication,
                                                 copy_from, origin, verdict)
from cowfleet.agents.storage.tgt import DEFAULT_PORT, TgtExporter
from cowfleet.models import Image
from cowfleet.protocol import P2P


class StorageAgent(NodeAgent):
    role = "storage"

    def __init__(self, *args, portal: str | None = None, exporter: Exporter | None = None, **kw):
        super().__init__(*args, **kw)
        os.chmod(self.state_dir, 0o755)
        self.copies = CopyStore(Path(self.state_dir) / "images")
        self.portal = portal or f"127.0.0.1:{DEFAULT_PORT}"
        self.exporter = exporter or TgtExporter(self.name)
        self.exports = Exports(self.exporter, self.log)
        self.exporter_health = ExporterHealth()
        self.replication = Replication(self.name)
        self.records = Publisher(self.zk, self.name, self.rack, self.portal)
        self.locator = Locator(self.zk, self.name, self.rack, self.holds, self.records.storage_members,
                               self.records.image, self.node_info, self.leading)
        self.data = DataServer(self.name, self.copies, self.records.image, self._store, self.wake.set)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fetch")
        self.fetching: set[str] = set()
        self.fetch_lock = threading.Lock()
        self._image_locks: dict[str, threading.Lock] = {}
        self._image_locks_lock = threading.Lock()

    def is_healthy(self) -> bool:
        return not self.exporter_health.down

    def capacity(self):
        return self.copies.capacity()

    def allocated(self):
        return self.copies.allocated()

    def start(self) -> None:
        # copies half-written by an earlier run (killed mid-fetch or mid-upload)
        for _, path in self.copies.partials():
            path.unlink(missing_ok=True)
        self.records.watch_images(lambda children: self.wake.set())

    def image_lock(self, name: str) -> threading.Lock:
        """Serialises "check, replace the copy, publish it" per image (two
        uploads of one image at once must not overwrite each other's copy)."""
        with self._image_locks_lock:
            return self._image_locks.setdefault(name, threading.Lock())

    # -- the round --------------------------------------------------------------
    def reconcile(self) -> None:
        names = self.records.image_names()
        if not self._exporter_answers(names):
            return
        storage = None
        for name in names:
            image = self.records.image(name)
            if image is None:
                continue
            path = self.copies.path(name)
            if self.records.publishes(name):
                if not path.exists():    # the copy vanished from disk: stop advertising it
                    self.records.withdraw(name, missing_ok=False)
                continue
            if path.exists():
                with self.image_lock(name):    # not while an upload replaces it
                    if self._publish_or_discard(name):
                        continue
            replicas = self.records.replicas(name)
            if len(replicas) >= image.min_replicas:
                self.replication.enough(name)
                continue
            if storage is None:
                storage = self.records.storage_members(healthy=True)
            if not self.replication.should_copy(image, replicas, storage):
                continue
            if self.replication.backing_off(image):
                continue        # the last copy failed: wait out its backoff
            peers = copy_from(image, [r.node for r in replicas],
                              lambda: [n.name for n in self.records.storage_members()])
            if peers is not None:
                self._fetch_async(image, peers)   # after an error too (backed off): it may pass now
        # copies whose image is gone (checked again under its lock: it may be new)
        for name in self.copies.names():
            if name not in names:
                with self.image_lock(name):
                    if not self.records.image_exists(name):
                        self.log.info("discarding master of deleted image %s", name)
                        self._discard_copy(name)
        for name, path in self.copies.partials():
            if name not in names and not self.records.image_exists(name):
                path.unlink(missing_ok=True)
        self.replication.forget_except(names)
        self.exports.reconcile(self._wanted_targets)

    def _publish_or_discard(self, name: str) -> bool:
        """A copy on disk that no replica record of ours names (agent start,
        tgtd back, a record lost): publish it if it is the current image's,
        else discard it. Under ``image_lock(name)``, the record read now.
        True if published (or kept for a later round)."""
        path = self.copies.path(name)
        image = self.records.image(name)
        if image is None or not path.exists():
            return False
        sha, copy_origin = self.copies.info(name)
        if copy_origin is None and sha is None:
            sha = file_sha256(path)        # no sidecar (a crash right after the copy landed)
        said = verdict(image, sha, copy_origin)
        if said == DROP_UNKNOWN:
            self.log.info("discarding a copy of %s whose image record it was not made for", name)
            self._discard_copy(name)
            return False
        if said == DROP_EARLIER:
            self.log.info("discarding the copy of an earlier image named %s", name)
            self._discard_copy(name)
            return False
        if said == LEARN_ORIGIN:
            self.copies.write_sidecar(name, sha, origin(image))   # older sidecars learn their origin
        return self._publish(image, sha)

    def _discard_copy(self, name: str) -> None:
        self.exports.unexport_path(str(self.copies.path(name)))
        self.copies.discard(name)

    # -- exports ------------------------------------------------------------------
    def _exporter_answers(self, names: set[str]) -> bool:
        """Whether our exporter (tgtd) answers. While it does not, nothing
        this node holds can be attached: its replica records are withdrawn
        (the images show fewer copies, and other nodes make new ones), and
        come back with the exports once it answers again."""
        try:
            self.exporter.check()
        except ExportError as exc:
            said = self.exporter_health.failed()
            if said == SLOW:      # one slow answer is not a dead tgtd: decide nothing this round
                self.log.warning("tgtd did not answer (%s); %d in a row", exc, self.exporter_health.failures)
                return False
            if said == WENT_DOWN:
                self.log.warning("tgtd does not answer (%s): withdrawing this node's replicas", exc)
                self.heartbeat()          # unhealthy at once: peers copy what it held elsewhere
            self.exports.forget()
            for name in self.copies.names():
                if name in names:
                    self.records.withdraw(name)
            return False
        if self.exporter_health.answered() == BACK:
            self.log.info("tgtd answers again: exporting and publishing this node's copies")
            self.heartbeat()
        return True

    def _wanted_targets(self) -> dict[str, str]:
        """iqn -> master path for every verified copy on disk."""
        out = {}
        for name in self.copies.names():
            sha, _ = self.copies.info(name)
            if sha:
                out[self.exporter.target_name(name, sha)] = str(self.copies.path(name))
        return out

    # -- making a copy --------------------------------------------------------------
    def _fetch_async(self, image: Image, peers: list[str]) -> None:
        """Copy ``image`` in the background, from ``peers`` if any, else from its source."""
        with self.fetch_lock:
            if image.name in self.fetching:
                return
            self.fetching.add(image.name)

        def store(chunks: Iterable[bytes]):
            return self._store(image, chunks, image.sha256)

        def run():
            try:
                if peers:
                    fetch.from_peers(image, peers, self.name, self.records.member, store, self.log)
                else:
                    fetch.from_source(image, store)
                self.replication.succeeded(image)
            except Exception as exc:
                # retried later, backed off (10 s doubling to 5 min): a peer may come
                # back, a source reappear; never in a loop against one that fails
                backoff = self.replication.failed(image)
                self.metrics.failure("copy-from-peer" if peers else "fetch-from-source")
                if peers:
                    self.log.warning("copying image %s from a peer failed (next try in %.0f s): %s",
                                     image.name, backoff, exc)
                    self.records.record_error(image, f"copying from a peer failed: {exc}"[:500])
                    return
                self.log.warning("fetching image %s failed (next try in %.0f s): %s", image.name, backoff, exc)
                self.records.record_error(image, f"fetch from {image.source_url} failed: {exc}"[:500])
            finally:
                with self.fetch_lock:
                    self.fetching.discard(image.name)
                self.wake.set()
        self.pool.submit(run)

    def _store(self, image: Image, chunks: Iterable[bytes], expected_sha: str | None) -> tuple[str, int]:
        """Write a master from ``chunks`` (never all in memory), verify it, make
        it read-only and publish it; returns (sha256, size)."""
        name = image.name
        with self.copies.receive(name, chunks, expected_sha, image.format) as (partial, sha, size):
            with self.image_lock(name):
                # the record decides, read now: another copy (an upload at the same
                # time) may have been recorded meanwhile; then only ours goes
                now = self.records.image(name)
                if now is None or now.created_at != image.created_at:
                    raise ValueError(f"image {name} was deleted meanwhile")
                if now.sha256 and now.sha256 != sha:
                    raise ValueError(f"image {name} was recorded with other data meanwhile "
                                     f"(sha256 {now.sha256})")
                if self.copies.path(name).exists() and self.copies.info(name) == (sha, origin(now)):
                    pass          # these very bytes are here already (and maybe exported): keep them
                else:
                    self.copies.install(partial, name, sha, origin(now))
                self.log.info("stored image %s (%d bytes, sha256 %s)", name, size, sha[:12])
                if not self._publish(now, sha):
                    raise ValueError(f"image {name} was recorded with other data meanwhile")
        return sha, size

    def _publish(self, image: Image, sha: str) -> bool:
        """Record the copy, whose sidecar its callers have written (it says
        ``sha``); False if it does not match the image's checksum."""
        name = image.name
        path = self.copies.path(name)
        size = self.copies.size(name)
        now = self.records.record_copy(image, sha, size)
        if now is None:
            return False
        if now.sha256 != sha:
            self.log.warning("copy of %s does not match its checksum; discarding", name)
            self._discard_copy(name)
            return False
        try:
            iqn = self.exports.export(name, sha, str(path))
        except ExportError as exc:     # the copy is good; exported and published once tgtd answers
            self.log.warning("cannot export %s yet: %s", name, exc)
            return True
        if self.records.publish(name, str(path), sha, size, iqn):
            self.log.info("serving a replica of %s", name)
        return True

    # -- P2P ------------------------------------------------------------------------
    def p2p_routes(self, server: P2PServer) -> None:
        super().p2p_routes(server)
        self.data.add_routes(server)
        for path, handler in ((P2P.HOLDS, self.locator.holds_p2p),
                              (P2P.RACK_LOCATE, self.locator.rack_locate_p2p),
                              (P2P.LOCATE, self.locator.locate)):
            server.json_route(path, handler)

    def holds(self, name: str) -> dict:
        """This agent's exported, verified copy of the image, if it has one."""
        path = self.copies.path(name)
        sha = self.copies.info(name)[0]
        if not path.exists() or not sha:
            return holds_answer(self.name, self.rack, None)
        iqn = self.exporter.target_name(name, sha)
        if not self.exports.serves(iqn, str(path)):
            return holds_answer(self.name, self.rack, None)   # not exported (yet): nobody could attach it
        return holds_answer(self.name, self.rack, {"portal": self.portal, "target": iqn, "sha256": sha,
                                                   "size_bytes": path.stat().st_size})
