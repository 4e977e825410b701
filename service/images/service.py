"""Images: the spec is written by the service, copies by the storage agents."""
from __future__ import annotations

from typing import Callable

import requests

from cowfleet import p2p
from cowfleet.checksum import SHA256_RE, SHA256_RULE
from cowfleet.models import Image, ImageStatus, NodeInfo, Replica
from cowfleet.protocol import ProblemType, image_data_path
from werkzeug.exceptions import HTTPException

from cowfleet.service.api import Result, fetch, read_body
from cowfleet.service.paging import ListQuery, page
from cowfleet.service.preconditions import ANY, Precondition
from cowfleet.service.problems import Problem, conflict, invalid, malformed, malformed_request, unavailable
from cowfleet.service.upsert import create_or_update, delete_unless_used
from cowfleet.zk import layout
from cowfleet.zk.connection import commit, read_children, read_later
from cowfleet.zk.members import members


def _status(image: Image, replicas: list[Replica], storage_nodes: Callable[[], int]) -> tuple[str, str]:
    """``storage_nodes()`` counts the storage members: a read of every node's
    record, made only for an image short of its replicas (1,000 reads a GET
    of a group at 1,000 agents, when it was made every time)."""
    n = len(replicas)
    if n >= image.min_replicas:
        return ImageStatus.AVAILABLE, f"{n} of {image.min_replicas} replicas"
    if image.error and n == 0:
        return ImageStatus.ERROR, image.error
    if image.error:         # some copies, but making the others fails (retried, backed off)
        return ImageStatus.DEGRADED, f"{n} of {image.min_replicas} replicas; the last copy failed: {image.error}"
    storage = storage_nodes()       # reached only for an image short of replicas, with no error
    if storage > n and (image.source_url or n):   # a source, or a peer to copy
        state = ImageStatus.REPLICATING if n else ImageStatus.PENDING
        return state, f"{n} of {image.min_replicas} replicas"
    if n == 0:
        return ImageStatus.PENDING, "no storage node holds a copy yet"
    return ImageStatus.DEGRADED, (f"{n} of {image.min_replicas} replicas: "
                                  f"only {storage} storage node(s) available")


def state(zk, name: str) -> tuple[Image, list[Replica], str, str] | None:
    """An image's record, its replicas, its status and message (None: no such image)."""
    image = read_later(zk, layout.image(name), Image)     # in flight with the replicas' read
    replicas = [r for r, _ in read_children(zk, layout.image_replicas(name), Replica)]
    got = image()
    if got is None:
        return None
    return (got[0], replicas, *_status(got[0], replicas, lambda: _storage_count(zk)))


def _storage_count(zk) -> int:
    return len(members(zk, "storage"))


def view(zk, image: Image, version: int) -> dict:
    replicas = [r for r, _ in read_children(zk, layout.image_replicas(image.name), Replica)]
    status, message = _status(image, replicas, lambda: _storage_count(zk))
    out = image.to_dict()
    out.update(status=status, message=message, etag=str(version),
               replicas=[{"node": r.node, "rack": r.rack} for r in replicas])
    return out


def get(zk, name: str) -> dict:
    return view(zk, *fetch(zk, layout.image(name), Image, "image", name))


def list_(zk, q: ListQuery) -> Result:
    return page(zk, layout.IMAGES, layout.image, Image, view, q)


def put(zk, name: str, spec: dict, pre: Precondition = ANY) -> tuple[dict, bool]:
    """Create, confirm or update an image; returns (view, created)."""
    def create() -> Image:
        image = Image(name=name, **spec)
        tx = zk.transaction()
        tx.create(layout.image(name), image.to_bytes())
        tx.create(layout.image_replicas(name), b"")
        tx.create(layout.users_guard(layout.image(name)), b"")
        commit(tx)
        return image

    def update(image: Image) -> Image | None:
        clashes = {f: [f"is immutable: '{getattr(image, f)}' was given before"]
                   for f in Image.IMMUTABLE if spec.get(f) != getattr(image, f)}
        if clashes:
            raise conflict(ProblemType.IMMUTABLE_FIELD,
                           f"image '{name}' exists with a different {', '.join(clashes)}", clashes)
        if spec["min_replicas"] == image.min_replicas and spec["labels"] == image.labels:
            return None
        image.min_replicas, image.labels = spec["min_replicas"], spec["labels"]
        return image

    image, version, created = create_or_update(zk, layout.image(name), Image, f"image '{name}'",
                                               pre, create, update)
    return view(zk, image, version), created


def delete(zk, name: str, pre: Precondition = ANY) -> None:
    # storage agents notice it is gone and discard their copies
    delete_unless_used(zk, layout.image(name), Image, "image", name, pre, children=("replicas",))


# -- image bytes ------------------------------------------------------------------

UPLOAD_CHUNK = 1 << 20


class _ClientBodyFailed(Exception):
    """The client's body broke off or was malformed mid-upload. Not an
    OSError, so that requests lets it through as it is instead of taking it
    for the storage node failing; the storage node sees its connection cut
    mid-chunk and drops the partial copy."""

    def __init__(self, problem: Exception):
        super().__init__(str(problem))
        self.problem = problem


def _storage_targets(zk, holders: set[str]) -> list[NodeInfo]:
    """Healthy storage nodes, those without a copy first, then most free disk."""
    nodes = [n for n in members(zk, "storage") if n.address]

    def free(n: NodeInfo) -> int:
        return n.capacity.get("disk_mib", 0) - n.allocated.get("disk_mib", 0)
    return sorted(nodes, key=lambda n: (n.name in holders, -free(n), n.name))


def _storage_problem_type(problem: dict) -> str:
    """The type of a problem the storage agent answered an upload with (the
    service re-raises it): the agent's own ``type`` (agents/storage/data_server.py
    sends one of ours with every refusal); an answer without one (not from
    a storage agent: a proxy's 4xx/5xx) is the node failing."""
    sent = problem.get("type")
    if isinstance(sent, str) and sent.startswith(ProblemType.PREFIX):
        return sent
    return ProblemType.NODE_FAILED


def upload(zk, name: str, stream, length: int | None, checksum: str | None,
           pre: Precondition = ANY) -> dict:
    """Stream an image's bytes through to one storage node, chunk by chunk
    (never the whole body in memory); peers replicate it from there.
    ``If-Match`` is checked against the image record before any byte moves."""
    image, version = fetch(zk, layout.image(name), Image, "image", name)
    pre.check(version, f"image '{name}'")
    if image.source_url:
        raise conflict(ProblemType.IMAGE_HAS_SOURCE,
                       f"image '{name}' is fetched from its source_url; it takes no upload")
    if checksum is not None:
        checksum = checksum.strip().lower()
        if not SHA256_RE.match(checksum):
            raise invalid({"X-Checksum-Sha256": [SHA256_RULE]},
                          "invalid X-Checksum-Sha256 header")
    if length == 0:
        raise malformed("the request body is empty; send the image bytes")
    replicas = [r for r, _ in read_children(zk, layout.image_replicas(name), Replica)]
    if checksum and image.sha256 == checksum and replicas:
        return get(zk, name)         # the same bytes again: nothing to do, the body is not read
    if image.sha256 and checksum and image.sha256 != checksum:
        raise conflict(ProblemType.IMAGE_DATA_IMMUTABLE,
                       f"image '{name}' already holds other data (sha256 {image.sha256}); "
                       "image data is immutable: create an image with another name")
    targets = _storage_targets(zk, {r.node for r in replicas})
    if not targets:
        raise unavailable("no storage node is available to take the upload", retry_after=5)
    room = max(n.capacity.get("disk_mib", 0) for n in targets) << 20
    if length is not None and room and length > room:
        # no byte moves: larger than any storage node's whole disk. (Free
        # space is the storage agent's check, as it writes: a full disk
        # answers image-too-large too, the partial copy removed.)
        raise Problem(413, "Content Too Large", f"the image is {length} bytes; the largest storage node's "
                      f"disk holds {room} bytes", type=ProblemType.IMAGE_TOO_LARGE)
    node = targets[0]
    headers = {"Content-Type": "application/octet-stream"}
    if checksum:
        headers["X-Checksum-Sha256"] = checksum

    def chunks():
        sent = 0
        while True:
            try:
                chunk = read_body(stream, UPLOAD_CHUNK)
            except (Problem, HTTPException) as exc:
                raise _ClientBodyFailed(exc) from None
            if not chunk:
                break
            sent += len(chunk)
            yield chunk
        if length is not None and sent < length:
            # gunicorn's body reader ends quietly where the client went away:
            # without this count a broken-off upload would be stored as the image
            raise _ClientBodyFailed(malformed_request(
                f"the body ended after {sent} of its {length} bytes (Content-Length); nothing was stored"))
    try:
        resp = p2p.session().put(node.address + image_data_path(name), data=chunks(), headers=headers,
                            timeout=(5, 600))
    except _ClientBodyFailed as exc:
        raise exc.problem from None
    except requests.RequestException as exc:
        raise unavailable(f"storage node {node.name} failed during the upload: "
                          f"{type(exc).__name__}; nothing was stored, retry", retry_after=2)
    if resp.status_code >= 400:
        try:
            problem = resp.json()
        except ValueError:
            problem = {}
        kind = _storage_problem_type(problem)
        if resp.status_code == 503 and kind == ProblemType.UNAVAILABLE:
            raise unavailable(problem.get("detail") or f"storage node {node.name} is unavailable; retry",
                              retry_after=2)
        status = resp.status_code if resp.status_code in (400, 404, 409, 413, 422) and kind != ProblemType.NODE_FAILED \
            else 502
        detail = problem.get("detail") or f"storage node {node.name} failed the upload (HTTP {resp.status_code})"
        field = "format" if kind == ProblemType.FORMAT_MISMATCH else "X-Checksum-Sha256"
        errors = {field: [detail]} if status == 422 else None
        raise Problem(status, problem.get("title") or "Bad Gateway", detail, errors=errors, type=kind)
    return get(zk, name)
