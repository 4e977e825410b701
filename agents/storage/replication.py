"""The replication policy: which copies this node makes, keeps or drops, and
when it tries again. No I/O: the agent reads ZooKeeper and its disk and asks
these functions (unit-tested in tests/unit/test_storage_policy.py).

- While an image has fewer replicas than ``min_replicas``, every agent
  computes the same ``copiers``: nodes in racks without a copy first, so
  replicas land in distinct racks. The chosen copy at once, the others only
  if the image stays short for DEFER_SECONDS (a chosen one may be unable to).
- A failed copy is tried again after a backoff (RETRY_MIN doubling to
  RETRY_MAX) that belongs to one image record, not to its name.
- A copy on disk counts only for the image record it was made for
  (``origin``); one made for an earlier record of the name is dropped.
"""
from __future__ import annotations

import time
import zlib
from typing import Callable, Protocol

from cowfleet.models import Image

RETRY_MIN, RETRY_MAX = 10.0, 300.0   # backoff of a failed copy (doubling)
DEFER_SECONDS = 30.0      # how long a non-preferred agent leaves a missing copy to the preferred ones

# what ``verdict`` says of a copy on disk that no replica record of ours names
KEEP, LEARN_ORIGIN, DROP_UNKNOWN, DROP_EARLIER = "keep", "learn-origin", "drop-unknown", "drop-earlier"


class _Holder(Protocol):       # a Replica
    node: str
    rack: str


class _Member(Protocol):       # a NodeInfo
    name: str
    rack: str


def copiers(image: str, min_replicas: int, replicas: list[_Holder], storage: list[_Member]) -> list[str]:
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


def origin(image: Image) -> str:
    """Which image record a copy was made for (see ``CopyStore.info``)."""
    return repr(float(image.created_at))


def verdict(image: Image, sha: str | None, copy_origin: str | None) -> str:
    """What to do with a copy on disk (``sha``, ``copy_origin`` from its
    sidecar; ``sha`` hashed from the file when there was no sidecar) that
    no replica record of ours names: KEEP it (publish it), LEARN_ORIGIN
    (an older sidecar without origin: write it, then publish), or drop it,
    as made for an unknown record (DROP_UNKNOWN: only a copy of the bytes
    the record names counts) or for an earlier image of the name (DROP_EARLIER)."""
    if copy_origin is None:
        return LEARN_ORIGIN if image.sha256 == sha else DROP_UNKNOWN
    return KEEP if copy_origin == origin(image) else DROP_EARLIER


def copy_from(image: Image, replica_nodes: list[str],
              storage_nodes: Callable[[], list[str]]) -> list[str] | None:
    """Where a copy of ``image`` comes from: [] for its ``source_url``; for
    an uploaded image, the peers to ask -- a replica's holder, else any
    storage node (``storage_nodes()``, read only then; one whose tgtd is
    down still serves its copy over P2P); None while it has neither (an
    upload not made yet)."""
    if image.source_url:
        return []
    if image.sha256:
        return list(replica_nodes) or storage_nodes()
    return None


class Replication:
    """One node's memory of when images went short and of failed copies."""

    def __init__(self, me: str, clock: Callable[[], float] = time.monotonic):
        self.me, self.clock = me, clock
        self.short_since: dict[str, float] = {}    # image -> when this agent first saw it short
        self.retry_at: dict[str, tuple[float, float]] = {}   # image@origin -> (next try, backoff)

    def enough(self, name: str) -> None:
        """The image has its replicas."""
        self.short_since.pop(name, None)

    def should_copy(self, image: Image, replicas: list[_Holder], storage: list[_Member]) -> bool:
        """Every agent computes the same ``copiers``; the chosen ones copy at
        once, the others only if the image stays short for DEFER_SECONDS."""
        if self.me in copiers(image.name, image.min_replicas, replicas, storage):
            return True
        since = self.short_since.setdefault(image.name, self.clock())
        return self.clock() - since > DEFER_SECONDS

    def backing_off(self, image: Image) -> bool:
        """The last copy of this image record failed and its backoff runs."""
        return self.clock() < self.retry_at.get(_retry_key(image), (0.0, 0.0))[0]

    def failed(self, image: Image) -> float:
        """A copy failed: the next try waits 10 s, doubling to 5 min. Returns the wait."""
        key = _retry_key(image)
        backoff = min(RETRY_MAX, self.retry_at.get(key, (0.0, RETRY_MIN / 2))[1] * 2)
        self.retry_at[key] = (self.clock() + backoff, backoff)
        return backoff

    def succeeded(self, image: Image) -> None:
        self.retry_at.pop(_retry_key(image), None)

    def forget_except(self, names: set[str]) -> None:
        """Backoffs of images that are gone go with them."""
        for key in [k for k in self.retry_at if k.split("@")[0] not in names]:
            self.retry_at.pop(key, None)


def _retry_key(image: Image) -> str:
    """Backoff belongs to one image record, not to its name (one made anew starts afresh)."""
    return f"{image.name}@{origin(image)}"
