"""The storage agent: holds read-only master images, exports each through
the machine's tgtd as a read-only iSCSI LUN, and says so in ZooKeeper.

For each image it fetches a copy while the image has fewer replicas than it
asks for -- from the image's ``source_url``, or, for uploaded images, from a
peer storage agent that holds one -- verifies the checksum, exports it
(``tgt.py``) and publishes an EPHEMERAL replica record with the portal and
target (gone with the agent, so the image's status is always the truth).
Which agents copy is decided the same way by all of them (``copiers``): the
nodes in racks without a copy first, so replicas land in distinct racks.
Copies whose image was deleted are discarded and unexported. At start, and on
every round, its targets are reconciled against what it holds: each copy
exported once, no target left over.

Its P2P endpoint takes uploads (``PUT /v1/images/NAME/data``, streamed by the
service), serves its copies to peers (``GET /v1/images/NAME/data``), and
answers where an image is (``POST /v1/locate`` to a storage rack leader, which
asks the other leaders ``POST /v1/rack-locate``, who ask their agents
``POST /v1/holds``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import uuid
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import time
import zlib

import requests
from kazoo.exceptions import NodeExistsError, NoNodeError
from werkzeug.wrappers import Request, Response

from cowfleet.agents.node import NodeAgent
from cowfleet.agents.storage import tgt
from cowfleet.checksum import SHA256_RE as SHA256_HEX
from cowfleet.checksum import file_sha256 as _sha256
from cowfleet.models import Image, NodeInfo, Replica
from cowfleet.p2p import post
from cowfleet.protocol import IMAGE_DATA_PATH as DATA_PATH
from cowfleet.zk import layout
from cowfleet.zk.connection import read, read_children, update
from cowfleet.zk.leaders import rack_leaders

CHUNK = 1 << 20
RETRY_MIN, RETRY_MAX = 10.0, 300.0   # backoff of a failed copy (doubling)
TGTD_FAILURES_DOWN = 2                # rounds in a row without an answer before tgtd counts as down
TGT_FAILURES = (tgt.TgtError, OSError, subprocess.TimeoutExpired)
DEFER_SECONDS = 30.0      # how long a non-preferred agent leaves a missing copy to the preferred ones
LOCATE_TIMEOUT = 3.0


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


class UploadRefused(Exception):
    def __init__(self, status: int, title: str, detail: str):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


class StorageAgent(NodeAgent):
    role = "storage"

    def __init__(self, *args, portal: str | None = None, **kw):
        super().__init__(*args, **kw)
        self.store = Path(self.state_dir) / "images"
        self.store.mkdir(parents=True, exist_ok=True)
        for d in (self.state_dir, self.store):
            os.chmod(d, 0o755)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fetch")
        self.fetching: set[str] = set()
        self.fetch_lock = threading.Lock()
        self.portal = portal or f"127.0.0.1:{tgt.DEFAULT_PORT}"
        self.exports: dict[str, str] = {}          # iqn -> master path, what tgtd exports for us
        self.export_lock = threading.Lock()
        self.short_since: dict[str, float] = {}    # image -> when this agent first saw it short
        self.retry_at: dict[str, tuple[float, float]] = {}   # image -> (next try, backoff) after a failed copy
        self._image_locks: dict[str, threading.Lock] = {}
        self._image_locks_lock = threading.Lock()
        self.tgtd_down = False                     # our tgtd did not answer: replicas withdrawn
        self.tgtd_failures = 0                     # rounds in a row it did not answer
        self.locate_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="locate")

    def is_healthy(self) -> bool:
        return not self.tgtd_down

    def capacity(self):
        st = os.statvfs(self.store)
        return {"disk_mib": st.f_blocks * st.f_frsize // (1 << 20)}

    def allocated(self):
        used = sum(p.stat().st_size for p in self.store.glob("*.img"))
        return {"disk_mib": used // (1 << 20), "images": len(list(self.store.glob("*.img")))}

    def start(self) -> None:
        # copies half-written by an earlier run (killed mid-fetch or mid-upload)
        for path in self.store.glob("*.partial"):
            path.unlink(missing_ok=True)
        self.zk.ChildrenWatch(layout.IMAGES, lambda children: self.wake.set())

    def master_path(self, name: str) -> Path:
        return self.store / f"{name}.img"

    def image_lock(self, name: str) -> threading.Lock:
        """Serialises "check, replace the copy, publish it" per image (two
        uploads of one image at once must not overwrite each other's copy)."""
        with self._image_locks_lock:
            return self._image_locks.setdefault(name, threading.Lock())

    def _copy_info(self, path: Path) -> tuple[str | None, str | None]:
        """(sha256, origin) of a copy, from its sidecar: the origin is the
        image record's ``created_at`` when the copy was made, so a copy of an
        image deleted and created anew under the same name is never taken for
        the new one's. Sidecars of older versions hold only the sha256."""
        try:
            words = path.with_suffix(".sha256").read_text().split()
        except OSError:
            return None, None
        if not words or not SHA256_HEX.match(words[0]):
            return None, None          # torn or foreign: as if there were none
        return words[0], (words[1] if len(words) > 1 else None)

    def _discard_copy(self, name: str) -> None:
        self._unexport_image(name)
        path = self.master_path(name)
        path.unlink(missing_ok=True)
        path.with_suffix(".sha256").unlink(missing_ok=True)

    def reconcile(self) -> None:
        names = set(self.zk.get_children(layout.IMAGES))
        if not self._tgtd_answers(names):
            return
        storage = None
        for name in names:
            got = read(self.zk, layout.image(name), Image)
            if got is None:
                continue
            image = got[0]
            mine = self.zk.exists(layout.image_replica(name, self.name))
            path = self.master_path(name)
            if mine:
                if not path.exists():    # the copy vanished from disk: stop advertising it
                    self.zk.delete(layout.image_replica(name, self.name))
                continue
            if path.exists():
                with self.image_lock(name):    # not while an upload replaces it
                    if self._publish_or_discard(name):
                        continue
            replicas = [r for r, _ in read_children(self.zk, layout.image_replicas(name), Replica)]
            if len(replicas) >= image.min_replicas:
                self.short_since.pop(name, None)
                continue
            if storage is None:
                storage = [n for n, _ in read_children(self.zk, layout.NODES, NodeInfo)
                           if n.role == "storage" and n.healthy]
            if not self._should_copy(image, replicas, storage):
                continue
            if time.monotonic() < self.retry_at.get(_retry_key(image), (0.0, 0.0))[0]:
                continue        # the last copy failed: wait out its backoff
            if image.source_url:
                self._fetch_async(image)      # after an error too (backed off): it may pass now
            elif image.sha256:
                # an uploaded image: copy a peer's -- a replica's holder, else any
                # storage node (one whose tgtd is down still serves its copy over P2P)
                peers = [r.node for r in replicas] or [n.name for n in self._storage_members()]
                self._fetch_async(image, peers=peers)
        # copies whose image is gone (checked again under its lock: it may be new)
        for path in self.store.glob("*.img"):
            if path.stem not in names:
                with self.image_lock(path.stem):
                    if not self.zk.exists(layout.image(path.stem)):
                        self.log.info("discarding master of deleted image %s", path.stem)
                        self._discard_copy(path.stem)
        for path in self.store.glob("*.partial"):
            stem = path.name.split(".")[0]
            if stem not in names and not self.zk.exists(layout.image(stem)):
                path.unlink(missing_ok=True)
        for key in [k for k in self.retry_at if k.split("@")[0] not in names]:
            self.retry_at.pop(key, None)
        self._reconcile_targets()

    def _storage_members(self) -> list[NodeInfo]:
        return [n for n, _ in read_children(self.zk, layout.NODES, NodeInfo) if n.role == "storage"]

    def _publish_or_discard(self, name: str) -> bool:
        """A copy on disk that no replica record of ours names (agent start,
        tgtd back, a record lost): publish it if it is the current image's,
        else discard it. Under ``image_lock(name)``, the record read now.
        True if published (or kept for a later round)."""
        path = self.master_path(name)
        got = read(self.zk, layout.image(name), Image)
        if got is None or not path.exists():
            return False
        image = got[0]
        sha, origin = self._copy_info(path)
        if origin is None and sha is None:
            sha = _sha256(path)        # no sidecar (a crash right after the copy landed)
        if origin is None and image.sha256 != sha:
            # made for an unknown record: only a copy of the bytes the record names counts
            self.log.info("discarding a copy of %s whose image record it was not made for", name)
            self._discard_copy(name)
            return False
        if origin is not None and origin != _origin(image):
            self.log.info("discarding the copy of an earlier image named %s", name)
            self._discard_copy(name)
            return False
        if origin is None:
            _write_sidecar(path, sha, _origin(image))   # older sidecars learn their origin
        return self._publish(image, path)

    def _should_copy(self, image: Image, replicas: list[Replica], storage: list[NodeInfo]) -> bool:
        """Every agent computes the same ``copiers``; the chosen ones copy at
        once, the others only if the image stays short for DEFER_SECONDS
        (a chosen agent may be unable to)."""
        chosen = copiers(image.name, image.min_replicas, replicas, storage)
        if self.name in chosen:
            return True
        since = self.short_since.setdefault(image.name, time.monotonic())
        return time.monotonic() - since > DEFER_SECONDS

    # -- iSCSI exports ----------------------------------------------------------
    def _tgtd_answers(self, names: set[str]) -> bool:
        """Whether our tgtd answers. While it does not, nothing this node
        holds can be attached: its replica records are withdrawn (the images
        show fewer copies, and other nodes make new ones), and come back
        with the exports once it answers again."""
        try:
            tgt.list_targets(tgt.node_prefix(self.name))
        except TGT_FAILURES as exc:
            self.tgtd_failures += 1
            if self.tgtd_failures < TGTD_FAILURES_DOWN:
                self.log.warning("tgtd did not answer (%s); %d in a row", exc, self.tgtd_failures)
                return False         # one slow answer is not a dead tgtd: decide nothing this round
            if not self.tgtd_down:
                self.log.warning("tgtd does not answer (%s): withdrawing this node's replicas", exc)
                self.tgtd_down = True
                self.heartbeat()          # unhealthy at once: peers copy what it held elsewhere
            with self.export_lock:
                self.exports = {}
            for path in self.store.glob("*.img"):
                if path.stem in names:
                    try:
                        self.zk.delete(layout.image_replica(path.stem, self.name))
                    except NoNodeError:
                        pass
            return False
        self.tgtd_failures = 0
        if self.tgtd_down:
            self.log.info("tgtd answers again: exporting and publishing this node's copies")
            self.tgtd_down = False
            self.heartbeat()
        return True

    def _wanted_targets(self) -> dict[str, str]:
        """iqn -> master path for every verified copy on disk."""
        out = {}
        for path in self.store.glob("*.img"):
            sha, _origin_ = self._copy_info(path)
            if sha:
                out[tgt.iqn_for(self.name, path.stem, sha)] = str(path)
        return out

    def _reconcile_targets(self) -> None:
        """Targets of this node in tgtd == the copies it holds: each exported
        once, nothing left over (e.g. after a crash or a restart)."""
        with self.export_lock:
            have = {t.iqn: t for t in tgt.list_targets(tgt.node_prefix(self.name))}
            wanted = self._wanted_targets()
            for iqn, t in have.items():
                if iqn not in wanted:
                    self.log.info("removing leftover target %s", iqn)
                    tgt.unexport(iqn)
            for iqn, path in wanted.items():
                if iqn not in have or have[iqn].backing != [path]:
                    tgt.export(iqn, path)
            self.exports = wanted

    def _export(self, name: str, sha: str, path: Path) -> str:
        iqn = tgt.iqn_for(self.name, name, sha)
        with self.export_lock:
            tgt.export(iqn, str(path))
            self.exports[iqn] = str(path)
        return iqn

    def _unexport_image(self, name: str) -> None:
        path = str(self.master_path(name))
        with self.export_lock:
            for iqn in [i for i, p in self.exports.items() if p == path]:
                tgt.unexport(iqn)
                self.exports.pop(iqn, None)

    def _fetch_async(self, image: Image, peers: list[Replica] | None = None) -> None:
        with self.fetch_lock:
            if image.name in self.fetching:
                return
            self.fetching.add(image.name)

        def run():
            try:
                if peers:
                    self._fetch_from_peer(image, peers)
                else:
                    self._fetch(image)
                self.retry_at.pop(_retry_key(image), None)
            except Exception as exc:
                # retried later, backed off (10 s doubling to 5 min): a peer may come
                # back, a source reappear; never in a loop against one that fails
                key = _retry_key(image)
                backoff = min(RETRY_MAX, self.retry_at.get(key, (0.0, RETRY_MIN / 2))[1] * 2)
                self.retry_at[key] = (time.monotonic() + backoff, backoff)
                if peers:
                    self.log.warning("copying image %s from a peer failed (next try in %.0f s): %s",
                                     image.name, backoff, exc)
                    self._record_error(image, f"copying from a peer failed: {exc}"[:500])
                    return
                self.log.warning("fetching image %s failed (next try in %.0f s): %s", image.name, backoff, exc)
                self._record_error(image, f"fetch from {image.source_url} failed: {exc}"[:500])
            finally:
                with self.fetch_lock:
                    self.fetching.discard(image.name)
                self.wake.set()
        self.pool.submit(run)

    def _fetch(self, image: Image) -> None:
        url = urllib.parse.urlparse(image.source_url)
        if url.scheme == "file":
            with open(urllib.parse.unquote(url.path), "rb") as src:
                self._store(image, iter(lambda: src.read(CHUNK), b""), image.sha256)
        else:
            with requests.get(image.source_url, stream=True, timeout=30) as resp:
                resp.raise_for_status()
                self._store(image, resp.iter_content(CHUNK), image.sha256)

    def _fetch_from_peer(self, image: Image, peers: list[str]) -> None:
        """Copy an uploaded image from a storage agent that holds it (its
        checksum, recorded at upload, is what the copy must match)."""
        errors = []
        for peer in peers:
            got = read(self.zk, layout.node(peer), NodeInfo)
            if got is None or not got[0].address or peer == self.name:
                continue
            url = f"{got[0].address}/v1/images/{image.name}/data"
            try:
                with requests.get(url, stream=True, timeout=30) as resp:
                    resp.raise_for_status()
                    self._store(image, resp.iter_content(CHUNK), image.sha256)
                self.log.info("replicated %s from %s", image.name, peer)
                return
            except (requests.RequestException, ValueError) as exc:
                errors.append(f"{peer}: {exc}")
        raise RuntimeError("; ".join(errors) or "no reachable peer holds a copy")

    def _store(self, image: Image, chunks, expected_sha: str | None) -> tuple[str, int]:
        """Write a master from ``chunks`` (never all in memory), verify it, make
        it read-only and publish it; returns (sha256, size)."""
        path = self.master_path(image.name)
        tmp = path.with_name(f"{image.name}.{uuid.uuid4().hex[:8]}.partial")
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
            check_format(tmp, image.format)
            os.chmod(tmp, 0o444)                        # masters are read-only
            with self.image_lock(image.name):
                # the record decides, read now: another copy (an upload at the same
                # time) may have been recorded meanwhile; then only ours goes
                got = read(self.zk, layout.image(image.name), Image)
                if got is None or got[0].created_at != image.created_at:
                    raise ValueError(f"image {image.name} was deleted meanwhile")
                if got[0].sha256 and got[0].sha256 != sha:
                    raise ValueError(f"image {image.name} was recorded with other data meanwhile "
                                     f"(sha256 {got[0].sha256})")
                if path.exists() and self._copy_info(path) == (sha, _origin(got[0])):
                    pass          # these very bytes are here already (and maybe exported): keep them
                else:
                    # no sidecar while the file changes: a crash here leaves a copy
                    # _publish_or_discard hashes and checks against the record
                    path.with_suffix(".sha256").unlink(missing_ok=True)
                    os.replace(tmp, path)
                    _write_sidecar(path, sha, _origin(got[0]))
                self.log.info("stored image %s (%d bytes, sha256 %s)", image.name, size, sha[:12])
                if not self._publish(got[0], path):
                    raise ValueError(f"image {image.name} was recorded with other data meanwhile")
        finally:
            tmp.unlink(missing_ok=True)
        return sha, size

    # -- P2P: uploads from the service, copies for peers ----------------------
    def p2p(self, request: Request) -> Response:
        m = DATA_PATH.match(request.path)
        if not m:
            return super().p2p(request)
        name = m.group(1)
        try:
            if request.method == "GET":
                return self._serve_copy(name)
            if request.method == "PUT":
                body = self._receive_upload(name, request)
                return Response(json.dumps(body), mimetype="application/json")
            raise UploadRefused(405, "Method Not Allowed", "use GET or PUT")
        except UploadRefused as exc:
            return Response(json.dumps({"title": exc.title, "status": exc.status, "detail": exc.detail}),
                            status=exc.status, mimetype="application/problem+json")

    def _serve_copy(self, name: str) -> Response:
        path = self.master_path(name)
        if not path.exists():
            raise UploadRefused(404, "Not Found", f"{self.name} holds no copy of image '{name}'")
        def chunks():
            with open(path, "rb") as fh:
                yield from iter(lambda: fh.read(CHUNK), b"")
        return Response(chunks(), mimetype="application/octet-stream",
                        headers={"Content-Length": str(path.stat().st_size)},
                        direct_passthrough=True)

    def _receive_upload(self, name: str, request: Request) -> dict:
        got = read(self.zk, layout.image(name), Image)
        if got is None:
            raise UploadRefused(404, "Not Found", f"image '{name}' does not exist")
        image = got[0]
        if image.source_url:
            raise UploadRefused(409, "Conflict", f"image '{name}' is fetched from its source_url")
        given = (request.headers.get("X-Checksum-Sha256") or "").strip().lower() or None
        if given and image.sha256 and given != image.sha256:
            raise UploadRefused(409, "Conflict", f"image '{name}' already holds other data "
                                f"(sha256 {image.sha256}); image data is immutable")
        expected = given or image.sha256
        stream = request.stream
        first = stream.read(CHUNK)
        if not first:
            raise UploadRefused(400, "Bad Request", "the body is empty; send the image bytes")
        try:
            sha, size = self._store(image, itertools.chain([first], iter(lambda: stream.read(CHUNK), b"")),
                                    expected)
        except FormatMismatch as exc:
            raise UploadRefused(422, "Format Mismatch", f"{exc}; nothing was stored")
        except ChecksumMismatch as exc:
            if given:   # the bytes are not what the client said it sent
                raise UploadRefused(422, "Checksum Mismatch", f"{exc}; nothing was stored")
            raise UploadRefused(409, "Conflict", f"image '{name}' already holds other data: {exc}; "
                                "image data is immutable")
        except ValueError as exc:
            raise UploadRefused(409, "Conflict", str(exc))
        self.wake.set()      # peers replicate once the replica record appears
        return {"node": self.name, "sha256": sha, "size_bytes": size}

    def _publish(self, image: Image, path: Path) -> bool:
        """Record the copy; False if it does not match the image's checksum."""
        sha = self._copy_info(path)[0]
        if sha is None:
            sha = _sha256(path)
            _write_sidecar(path, sha, _origin(image))
        size = path.stat().st_size

        def record(img: Image):
            if img.created_at != image.created_at:
                return None        # an image of the same name made since: not this copy's
            if img.sha256 and img.sha256 != sha:
                return None
            if img.sha256 == sha and img.size_bytes == size and img.error is None:
                return None
            img.sha256, img.size_bytes, img.error = sha, size, None
            return img
        update(self.zk, layout.image(image.name), Image, record)
        got = read(self.zk, layout.image(image.name), Image)
        if got is None or got[0].created_at != image.created_at:
            return False
        if got[0].sha256 != sha:
            self.log.warning("copy of %s does not match its checksum; discarding", image.name)
            self._discard_copy(image.name)
            return False
        try:
            iqn = self._export(image.name, sha, path)
        except TGT_FAILURES as exc:     # the copy is good; exported and published once tgtd answers
            self.log.warning("cannot export %s yet: %s", image.name, exc)
            return True
        replica = Replica(node=self.name, rack=self.rack, path=str(path), sha256=sha, size_bytes=size,
                          portal=self.portal, target=iqn)
        try:
            self.zk.create(layout.image_replica(image.name, self.name), replica.to_bytes(), ephemeral=True)
            self.log.info("serving a replica of %s", image.name)
        except (NodeExistsError, NoNodeError):
            pass
        return True

    # -- P2P: where is an image? (seed 001 steps 6-8) ---------------------------
    def p2p_routes(self):
        return {("POST", "/v1/holds"): self.holds,
                ("POST", "/v1/rack-locate"): self.rack_locate_p2p,
                ("POST", "/v1/locate"): self.locate}

    def holds(self, body: dict) -> tuple[int, dict]:
        """This agent's exported, verified copy of the image, if it has one."""
        name = str(body["image"])
        path = self.master_path(name)
        answer = {"node": self.name, "rack": self.rack, "holds": False}
        sha = self._copy_info(path)[0]
        if not path.exists() or not sha:
            return 200, answer
        iqn = tgt.iqn_for(self.name, name, sha)
        if self.exports.get(iqn) != str(path):
            return 200, answer            # not exported (yet): nobody could attach it
        answer.update(holds=True, portal=self.portal, target=iqn, sha256=sha,
                      size_bytes=path.stat().st_size)
        return 200, answer

    def rack_locate(self, body: dict) -> dict:
        """As storage rack leader: ask every storage agent of the rack, in parallel."""
        nodes = [n for n, _ in read_children(self.zk, layout.NODES, NodeInfo)
                 if n.role == "storage" and n.rack == self.rack and n.healthy and n.address]

        def ask(node: NodeInfo) -> dict:
            if node.name == self.name:
                return self.holds(body)[1]
            return post(f"{node.address}/v1/holds", {"image": body["image"]}, LOCATE_TIMEOUT)
        holders, errors = [], {}
        futures = {n.name: self.locate_pool.submit(ask, n) for n in nodes}
        for name, fut in futures.items():
            try:
                answer = fut.result()
                if answer.get("holds"):
                    holders.append(answer)
            except Exception as exc:      # an agent that cannot answer holds nothing reachable
                errors[name] = type(exc).__name__
        return {"rack": self.rack, "leader": self.name, "holders": holders, "errors": errors}

    def rack_locate_p2p(self, body: dict) -> tuple[int, dict]:
        if not self.leading.is_set():
            return 409, {"detail": f"{self.name} does not lead storage rack {self.rack}"}
        return 200, self.rack_locate(body)

    def locate(self, body: dict) -> tuple[int, dict]:
        """Asked by a compute agent: every storage rack leader in parallel
        (this rack answered in-process); replicas whose checksum is not the
        image's are left out. The asker's rack comes first."""
        if not self.leading.is_set():
            return 409, {"detail": f"{self.name} does not lead storage rack {self.rack}"}
        name = str(body["image"])
        got = read(self.zk, layout.image(name), Image)
        if got is None:
            return 404, {"detail": f"image '{name}' does not exist"}
        image = got[0]
        leaders = rack_leaders(self.zk, "storage")
        leaders.setdefault(self.rack, self.node_info())
        ask_body = {"image": name}

        def ask(rack: str, leader: NodeInfo) -> dict:
            t0 = time.monotonic()
            try:
                if leader.name == self.name:
                    answer = self.rack_locate(ask_body)
                else:
                    answer = post(f"{leader.address}/v1/rack-locate", ask_body, LOCATE_TIMEOUT)
            except Exception as exc:
                answer = {"rack": rack, "leader": leader.name, "holders": [],
                          "error": f"{type(exc).__name__}: {exc}"[:200]}
            answer["ms"] = round((time.monotonic() - t0) * 1000, 1)
            return answer
        answers = list(self.locate_pool.map(lambda kv: ask(*kv), leaders.items()))
        holders = [h for a in answers for h in a.get("holders", []) if h.get("sha256") == image.sha256]
        near = str(body.get("rack") or "")
        spread = str(body.get("node") or "")
        holders.sort(key=lambda h: (h["rack"] != near, zlib.crc32(f"{spread}/{h['node']}".encode())))
        replicas = [{k: h[k] for k in ("node", "rack", "portal", "target", "sha256", "size_bytes")}
                    for h in holders]
        racks = {a["rack"]: {k: a[k] for k in ("leader", "ms", "error", "errors") if k in a} for a in answers}
        return 200, {"image": name, "format": image.format, "sha256": image.sha256,
                     "min_replicas": image.min_replicas, "replicas": replicas, "racks": racks,
                     "answered_by": self.name}

    def _record_error(self, image: Image, message: str) -> None:
        def change(img: Image):
            if img.created_at != image.created_at or img.error == message:
                return None         # an image of the same name made since, or said already
            try:
                if len(self.zk.get_children(layout.image_replicas(image.name))) >= img.min_replicas:
                    return None     # another node made the copy meanwhile: nothing is wrong
            except NoNodeError:
                return None
            img.error = message
            return img
        update(self.zk, layout.image(image.name), Image, change)


def copiers(image: str, min_replicas: int, replicas: list[Replica], storage: list[NodeInfo]) -> list[str]:
    """The storage nodes that should make the missing copies of ``image``:
    nodes without a copy, those in racks without one first (distinct racks
    when there are several), then a stable per-image order (spreads images
    over nodes), as many as are missing."""
    holders = {r.node for r in replicas}
    racks_with = {r.rack for r in replicas}
    candidates = [n for n in storage if n.name not in holders]
    candidates.sort(key=lambda n: (n.rack in racks_with, zlib.crc32(f"{image}/{n.name}".encode())))
    chosen, racks = [], set(racks_with)
    for n in candidates:       # one per new rack first, then the rest
        if len(chosen) >= min_replicas - len(replicas):
            break
        if n.rack not in racks:
            chosen.append(n.name)
            racks.add(n.rack)
    for n in candidates:
        if len(chosen) >= min_replicas - len(replicas):
            break
        if n.name not in chosen:
            chosen.append(n.name)
    return chosen


def _retry_key(image: Image) -> str:
    """Backoff belongs to one image record, not to its name (one made anew starts afresh)."""
    return f"{image.name}@{_origin(image)}"


def _write_sidecar(path: Path, sha: str, origin: str) -> None:
    """``NAME.sha256`` beside the copy: "<sha256> <origin>", written whole or not at all."""
    sidecar = path.with_suffix(".sha256")
    tmp = sidecar.with_name(f"{path.stem}.{uuid.uuid4().hex[:8]}.sidecar.partial")
    try:
        with open(tmp, "w") as fh:
            fh.write(f"{sha} {origin}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)


def _origin(image: Image) -> str:
    """Which image record a copy was made for (see ``_copy_info``)."""
    return repr(float(image.created_at))
