"""Where is an image? (seed 001, steps 6-8.) A compute agent asks a storage
rack leader ``POST /v1/locate``; it asks every storage rack leader in
parallel ``POST /v1/rack-locate`` (its own rack in-process), each of which
asks the storage agents of its rack in parallel ``POST /v1/holds``.

The answers are shaped by pure functions (``holds_answer``, ``rack_answer``,
``locate_answer``, unit-tested); ``Locator`` does the fan-out.
"""
from __future__ import annotations

import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from cowfleet.p2p import post
from cowfleet.models import Image, NodeInfo
from cowfleet.protocol import P2P, LocateAnswer, replica_location
from cowfleet.zk.leaders import rack_leaders
from cowfleet.zk.members import serving

LOCATE_TIMEOUT = 3.0
# how old the storage members and rack leaders a locate asks may be (``Recent``)
MEMBERS_SECONDS = 0.5


def holds_answer(node: str, rack: str, held: dict | None) -> dict:
    """An agent's answer to /v1/holds: ``held`` is its exported, verified copy
    (portal, target, sha256, size_bytes), None if it has none."""
    answer = {"node": node, "rack": rack, "holds": False}
    if held:
        answer.update(holds=True, **held)
    return answer


def rack_answer(rack: str, leader: str, results: dict[str, dict | Exception]) -> dict:
    """A rack leader's answer to /v1/rack-locate from its agents' answers
    (node -> answer, or the error asking it raised): the holders, and which
    agents could not answer (they hold nothing reachable)."""
    holders, errors = [], {}
    for name, result in results.items():
        try:
            if isinstance(result, Exception):
                raise result
            if result.get("holds"):
                holders.append(result)
        except Exception as exc:      # no answer, or not an answer: holds nothing reachable
            errors[name] = type(exc).__name__
    return {"rack": rack, "leader": leader, "holders": holders, "errors": errors}


def locate_answer(image: Image, answers: list[dict], near: str, spread: str, answered_by: str) -> dict:
    """The answer to /v1/locate from the rack leaders' answers: holders whose
    checksum is not the image's are left out; the asker's rack (``near``)
    first, then an order spread per asking node (``spread``)."""
    holders = [h for a in answers for h in a.get("holders", []) if h.get("sha256") == image.sha256]
    holders.sort(key=lambda h: (h["rack"] != near, zlib.crc32(f"{spread}/{h['node']}".encode())))
    racks = {a["rack"]: {k: a[k] for k in ("leader", "ms", "error", "errors") if k in a} for a in answers}
    return LocateAnswer(image=image.name, format=image.format, sha256=image.sha256,
                        min_replicas=image.min_replicas, replicas=[replica_location(h) for h in holders],
                        answered_by=answered_by, racks=racks).to_dict()


class Recent:
    """``fn()``'s value, read at most once per ``seconds``: a caller within
    that time gets the last value, and callers that come during a read wait
    for it rather than reading too.

    Why: a storage rack leader answers every locate with its rack's storage
    members, and reading them is a read of every member record (storage and
    compute alike: the membership folder has no index by role). At 1,000
    compute agents, each locating its image when its first instance starts,
    that was 1,000 reads of 1,000 records within seconds, and the storage
    agent used a core for ~40 s (bench/placement.py, session 12). By hand:
    cachetools' TTL cache behind a lock still reads once per caller that
    misses at the same time, and the herd is what this is for."""

    def __init__(self, fn: Callable[[], object], seconds: float, clock: Callable[[], float] = time.monotonic):
        self.fn, self.seconds, self.clock = fn, seconds, clock
        self._lock = threading.Lock()
        self._value = None
        self._at = float("-inf")
        self.reads = 0

    def __call__(self):
        with self._lock:            # held during the read: the herd waits for it
            if self.clock() - self._at < self.seconds:
                return self._value
            value = self.fn()       # raises: nothing kept, the next caller reads
            self._value, self._at = value, self.clock()
            self.reads += 1
            return value


class Locator:
    """The fan-out of storage agent ``name`` of ``rack``: ``holds(image)``
    answers for it, ``members()`` lists the storage members, ``image(name)``
    reads a record, ``node_info()`` is its membership record; ``leading`` is
    set while it leads its rack."""

    def __init__(self, zk, name: str, rack: str, holds: Callable[[str], dict],
                 members: Callable[[], list[NodeInfo]], image: Callable[[str], Image | None],
                 node_info: Callable[[], NodeInfo], leading: threading.Event):
        self.zk, self.name, self.rack, self.holds = zk, name, rack, holds
        self.image, self.node_info, self.leading = image, node_info, leading
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="locate")
        # both read for every locate, and both kept MEMBERS_SECONDS: the
        # members are a read of every membership record, the leaders a wave
        # of reads over every rack, compute ones included (101 at 1,000
        # agents; py-spy put 57% of a storage leader's busy samples there
        # during a 1,000-agent placement's locate herd)
        self.members = Recent(members, MEMBERS_SECONDS)
        # the storage members' racks only, not every rack's folder (at 100
        # compute racks, 100 of the 101 folders read had no storage election)
        self.leaders = Recent(lambda: rack_leaders(self.zk, "storage", {n.rack for n in self.members()} or None),
                              MEMBERS_SECONDS)

    def not_leading(self) -> tuple[int, dict]:
        return 409, {"detail": f"{self.name} does not lead storage rack {self.rack}"}

    def holds_p2p(self, body: dict) -> tuple[int, dict]:
        return 200, self.holds(str(body["image"]))

    def rack_locate(self, body: dict) -> dict:
        """As storage rack leader: ask every storage agent of the rack, in parallel."""
        nodes = [n for n in self.members() if serving(n, "storage", self.rack) and n.address]

        def ask(node: NodeInfo) -> dict:
            if node.name == self.name:
                return self.holds(str(body["image"]))
            return post(node.address, P2P.HOLDS, {"image": body["image"]}, LOCATE_TIMEOUT)
        futures = {n.name: self.pool.submit(ask, n) for n in nodes}
        results: dict[str, dict | Exception] = {}
        for name, fut in futures.items():
            try:
                results[name] = fut.result()
            except Exception as exc:      # an agent that cannot answer holds nothing reachable
                results[name] = exc
        return rack_answer(self.rack, self.name, results)

    def rack_locate_p2p(self, body: dict) -> tuple[int, dict]:
        if not self.leading.is_set():
            return self.not_leading()
        return 200, self.rack_locate(body)

    def locate(self, body: dict) -> tuple[int, dict]:
        """Asked by a compute agent: every storage rack leader in parallel
        (this rack answered in-process)."""
        if not self.leading.is_set():
            return self.not_leading()
        name = str(body["image"])
        image = self.image(name)
        if image is None:
            return 404, {"detail": f"image '{name}' does not exist"}
        leaders = dict(self.leaders())      # a copy: the shared answer is not changed
        leaders.setdefault(self.rack, self.node_info())
        ask_body = {"image": name}

        def ask(rack: str, leader: NodeInfo) -> dict:
            t0 = time.monotonic()
            try:
                if leader.name == self.name:
                    answer = self.rack_locate(ask_body)
                else:
                    answer = post(leader.address, P2P.RACK_LOCATE, ask_body, LOCATE_TIMEOUT)
            except Exception as exc:
                answer = {"rack": rack, "leader": leader.name, "holders": [],
                          "error": f"{type(exc).__name__}: {exc}"[:200]}
            answer["ms"] = round((time.monotonic() - t0) * 1000, 1)
            return answer
        answers = list(self.pool.map(lambda kv: ask(*kv), leaders.items()))
        return 200, locate_answer(image, answers, str(body.get("rack") or ""), str(body.get("node") or ""),
                                  self.name)
