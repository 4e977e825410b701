"""The placement hand-shake between agents (seed 001, steps 2-5).

The coordinator (a compute rack leader handed a request) asks every compute
rack leader, in parallel, for offers; each rack leader asks the compute
agents of its rack, in parallel; each agent answers how many instances of the
flavor it can take and holds a short reservation for them. The coordinator
splits the request by the placement policy (``policy.split``) and commits
the assignments in bounded ZooKeeper transactions (placement.py).

Over-commit is impossible, not just unlikely: an offer carries the version of
the node's assignment folder it was computed from, and the commit sets that
folder's data with that version, so two coordinators that both counted the
same free space cannot both commit. Reservations only keep concurrent
requests from chasing the same space in the first place.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from kazoo.exceptions import ConnectionLoss, NoNodeError
from kazoo.protocol.states import KazooState

from cowfleet.agents.policy import offer_count
from cowfleet.models import Flavor, NodeInfo
from cowfleet.p2p import post
from cowfleet.protocol import P2P, Assignment, NodeOffer, Trace
from cowfleet.zk import layout
from cowfleet.zk.leaders import rack_leaders
from cowfleet.zk.members import members, serving

log = logging.getLogger(__name__)

RESERVATION_SECONDS = 10.0
# How long a coordinator keeps the compute rack leaders it read when the
# membership did not change meanwhile (``HandshakeGatherer.leaders``)
LEADERS_SECONDS = 60.0


class Reservations:
    """Capacity an agent has offered and not yet seen committed or expired."""

    def __init__(self, ttl: float = RESERVATION_SECONDS):
        self.ttl = ttl
        self._held: dict[str, tuple[int, int, float]] = {}   # request -> (vcpus, mib, expiry)
        self._lock = threading.Lock()

    def held_by_others(self, request: str) -> tuple[int, int]:
        now = time.monotonic()
        with self._lock:
            for r in [r for r, (_, _, exp) in self._held.items() if exp < now]:
                del self._held[r]
            vcpus = sum(v for r, (v, _, _) in self._held.items() if r != request)
            mib = sum(m for r, (_, m, _) in self._held.items() if r != request)
        return vcpus, mib

    def hold(self, request: str, vcpus: int, mib: int) -> None:
        with self._lock:
            if vcpus or mib:
                self._held[request] = (vcpus, mib, time.monotonic() + self.ttl)
            else:
                self._held.pop(request, None)

    def release(self, request: str) -> None:
        with self._lock:
            self._held.pop(request, None)

    def __len__(self) -> int:
        return len(self._held)


class Gatherer:
    """Asks for offers. ``HandshakeGatherer`` goes over the agents' P2P
    endpoints; ``LocalGatherer`` computes the same offers from ZooKeeper
    alone (unit tests, and a coordinator whose peers are unreachable)."""

    def offers(self, zk, request: str, group: str, flavor: Flavor, want: int,
               trace: Trace) -> list[NodeOffer]:
        raise NotImplementedError

    def release(self, zk, request: str) -> None:
        """Drop the reservations of ``request`` (best effort, may be async)."""


@dataclass(frozen=True)
class OfferBasis:
    """What a node's offers count: its assignments (child name -> data) and
    its folder's version, from ONE read, so they agree -- a commit that
    placed on the node changed both at once."""
    version: int
    assignments: dict[str, bytes]


def read_basis(zk, node_name: str, known=None) -> OfferBasis:
    """The node's assignment list and folder version in one read. The data
    of each assignment (its vCPUs and MiB; only ever changes from run to
    terminate) may come from ``known(child) -> bytes | None`` -- the agent's
    own cache -- and is read from ZooKeeper otherwise."""
    folder = layout.assignments(node_name)
    try:
        children, stat = zk.get_children(folder, include_data=True)
    except NoNodeError:
        zk.ensure_path(folder)
        children, stat = zk.get_children(folder, include_data=True)
    datas = {}
    missing = []
    for child in children:
        data = known(child) if known else None
        if data is None:
            missing.append((child, zk.get_async(f"{folder}/{child}")))
        else:
            datas[child] = data
    for child, res in missing:
        try:
            datas[child] = res.get()[0]
        except NoNodeError:
            continue              # removed meanwhile: the agent freed it
    return OfferBasis(version=stat.version, assignments=datas)


def offer_from(basis: OfferBasis, node: NodeInfo, group: str, flavor: Flavor, want: int,
               reserved: tuple[int, int] = (0, 0)) -> NodeOffer:
    used_v = used_m = of_group = 0
    for child, data in basis.assignments.items():
        a = Assignment.from_bytes(data)
        if not a.runs:
            continue          # terminating: its resources are being freed
        used_v += a.vcpus
        used_m += a.memory_mib
        if layout.parse_assignment(child)[0] == group:
            of_group += 1
    count = offer_count(node.capacity, used_v, used_m, reserved, flavor, want)
    return NodeOffer(node=node.name, rack=node.rack, count=count, version=basis.version,
                     of_group=of_group, used_vcpus=used_v, used_memory_mib=used_m)


def node_offer(zk, node: NodeInfo, group: str, flavor: Flavor, want: int,
               reserved: tuple[int, int] = (0, 0)) -> NodeOffer:
    """A node's offer from its assignments in ZooKeeper (one read)."""
    return offer_from(read_basis(zk, node.name), node, group, flavor, want, reserved)


class KeptBasis:
    """A compute agent's offer basis, kept between offers and read again only
    when the agent's cache of its assignment folder (a TreeCache) shows
    something else: another version, other assignments or other data.

    The agent reads it again as soon as its cache changes (``current`` from
    its reconcile), so an offer -- 1,000 of them in a round at 1,000 agents,
    each a ZooKeeper round trip -- finds it read already.

    The cache only decides WHEN to read; what an offer counts is always one
    read of ZooKeeper's, list and version together. So a cache that lags
    cannot cause an over-commit: assignments are only ever added with the
    folder's version set (a placement's unit), so a basis of version v
    counts at least what the node uses while the folder is at v, and a
    commit on an older v than ZooKeeper's fails on its version guard. What a
    lagging cache can do is let an offer count an instance already freed
    (terminated, removed): a smaller offer, until the cache shows it.

    A coordinator that lost a commit on a node's folder guard names the node
    in its next offer round (``fresh``): then the basis is read whatever the
    cache shows, so a cache still behind the placement that won cannot make
    the same stale offer on each of the coordinator's immediate retries."""

    def __init__(self, zk, node_name: str, cache):
        self.zk, self.node_name, self.cache = zk, node_name, cache
        self.folder = layout.assignments(node_name)
        self._basis: OfferBasis | None = None
        self._lock = threading.Lock()     # offers come on the P2P server's threads, reconciles on another
        self.reads = 0

    def current(self, fresh: bool = False) -> OfferBasis:
        # cut off from ZooKeeper, an agent offers nothing, as it did when each
        # offer read ZooKeeper: its session may be expiring (its instances to
        # be placed again elsewhere), and the kept basis could not be checked
        if self.zk.state != KazooState.CONNECTED:
            raise ConnectionLoss(f"{self.node_name} is not connected to ZooKeeper ({self.zk.state})")
        with self._lock:
            b = self._basis
            if b is None or fresh or not self._shown(b):
                b = self._basis = read_basis(self.zk, self.node_name, known=self._running)
                self.reads += 1
            return b

    def _cached(self, child: str) -> bytes | None:
        node = self.cache.get_data(f"{self.folder}/{child}")
        return node.data if node is not None else None

    def _running(self, child: str) -> bytes | None:
        """An assignment's data from the cache only if it says run: data only
        ever goes from run to terminate, so a cached run counts at least what
        is there; a cached terminate could be an earlier assignment of the
        same name (ids are random, a freed one may come again), read anew."""
        data = self._cached(child)
        return data if data is not None and Assignment.from_bytes(data).runs else None

    def _shown(self, b: OfferBasis) -> bool:
        top, children = self.cache.get_data(self.folder), self.cache.get_children(self.folder)
        if top is None or children is None or top.stat.version != b.version \
                or len(children) != len(b.assignments):
            return False
        return all(c in b.assignments and b.assignments[c] == self._cached(c) for c in children)


class PeerDirectory:
    """The agents a rack leader talks to (and the peers a node routes
    instance subnets to), without reading every membership record on every
    request: the set of names comes from a children watch, and a record --
    for its rack, P2P address and subnet, which do not change during a
    session -- is read once per name. A peer that fails a call is forgotten
    and read again.

    Not kazoo's ChildrenWatch: it re-reads the whole list on every join and
    leave, in every agent, so a fleet's start-up costs n reads of an n-name
    list per join (n^2/2 in all, and each read's reply parsed in Python).
    Measured with bench/placement.py (fake agents in 50 processes, 2 cores):
    300 agents were up in 74 s, 500 not within 3 min, with their threads
    waiting on those reads and their sessions expiring under the load. Here a
    watch event only marks the list stale. It is read again (re-arming the
    watch) when someone asks for the nodes -- so an answer is never older
    than the last event -- and ``on_change`` hears of a different set of
    names at most once every ``min_interval`` seconds, however many agents
    joined meanwhile: it wakes loops that ask again, and telling them on
    every change made them read on every join."""

    # One directory per ZooKeeper client (``shared``): agents that share a
    # session (agents/fleet.py --shared-session, 20 a process) share its list
    # and its record cache. One each made every agent of a 1,000-agent fleet
    # read the 1,000-name list once a second while the fleet joined, and each
    # of the 1,000 records once: 1,000,000 record reads to start it.
    _of_client: dict = {}                # zk -> [directory, users]
    _of_client_lock = threading.Lock()

    def __init__(self, zk, on_change=None, min_interval: float = 1.0):
        self.zk = zk
        self._listeners = [on_change] if on_change else []   # called from the directory's thread
        self._min_interval = min_interval
        self._names: set[str] = set()
        self._known: dict[str, NodeInfo] = {}
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._stale = threading.Event()  # a change seen since the last read
        self._due = threading.Event()    # the thread has a read or a telling to do
        self._closed = threading.Event()
        self._unreported = False         # the names changed since on_change last heard
        self._last = float("-inf")
        self.reads = 0                   # of the whole list (tests)
        self.version = 0                 # grows with every change to the names or records known
        self._stale.set()
        try:
            self._read()
        except Exception:                    # no connection now: read by the first asker, or the thread
            self._due.set()
        zk.add_listener(self._on_state)
        self.thread = threading.Thread(target=self._run, name="peers", daemon=True)
        self.thread.start()

    def _on_watch(self, event) -> None:            # kazoo's thread: never block
        self._stale.set()
        self._due.set()

    def _on_state(self, state) -> None:            # kazoo's thread: never block
        # kazoo fires and drops its watches when the connection is suspended
        # (marking the list stale) and sets none again: read on reconnection
        if state == KazooState.CONNECTED:
            self._on_watch(None)

    def _read(self) -> None:
        """Read the list, re-arming the watch, if it is stale."""
        with self._reading:                  # one read at a time; the others then find it fresh
            if not self._stale.is_set():
                return
            if not self.zk.connected:
                # kazoo queues a request while it reconnects and a plain get
                # waits as long: the askers (offers, releases, the agent's
                # loop) answer from the names known instead
                raise ConnectionLoss("not connected to ZooKeeper")
            self._stale.clear()              # before the read: a change during it marks it again
            try:
                children = set(self.zk.get_children(layout.NODES, watch=self._on_watch))
            except Exception:
                self._on_watch(None)         # read again: by the next asker, or the thread
                raise
            self.reads += 1
            with self._lock:
                if children != self._names:
                    self._unreported = True
                    self._due.set()
                    self.version += 1
                self._names = children
                for name in [n for n in self._known if n not in children]:
                    del self._known[name]

    def _run(self) -> None:
        while not self._closed.is_set():
            self._due.wait()
            if self._closed.wait(max(0.0, self._last + self._min_interval - time.monotonic())):
                return
            self._last = time.monotonic()
            self._due.clear()
            try:
                self._read()
            except Exception:                # no connection: tried again an interval later
                continue
            with self._lock:
                tell, self._unreported = self._unreported, False
                names = sorted(self._names)
            if not tell:
                continue
            with self._lock:
                listeners = list(self._listeners)
            for on_change in listeners:
                try:
                    on_change(names)
                except Exception:            # the thread goes on: it is the only one that tells
                    log.exception("peer directory: on_change failed")

    @classmethod
    def shared(cls, zk, on_change=None, min_interval: float = 1.0) -> PeerDirectory:
        """The directory of ``zk`` (made on first use), with ``on_change``
        among the ones it tells; give it back with ``release``."""
        with cls._of_client_lock:
            entry = cls._of_client.get(zk)
            if entry is None:
                entry = cls._of_client[zk] = [cls(zk, min_interval=min_interval), 0]
            entry[1] += 1
            directory = entry[0]
        if on_change:
            with directory._lock:
                directory._listeners.append(on_change)
        return directory

    def release(self, on_change=None) -> None:
        """A user of ``shared`` is done; the last one closes it."""
        with self._lock:
            if on_change in self._listeners:
                self._listeners.remove(on_change)
        with self._of_client_lock:
            entry = self._of_client.get(self.zk)
            if entry is None or entry[0] is not self:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._of_client[self.zk]
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._due.set()
        self.zk.remove_listener(self._on_state)

    def forget(self, name: str) -> None:
        with self._lock:
            if self._known.pop(name, None) is not None:
                self.version += 1

    def changed_since(self, version: int) -> bool:
        """Whether the peers may differ from when ``version`` was read (a
        change seen and not read yet counts)."""
        return self._stale.is_set() or self.version != version

    def nodes(self, role: str, rack: str | None = None) -> list[NodeInfo]:
        try:
            self._read()                     # a change seen since the last read: read now
        except Exception:                    # no connection: the names known
            pass
        with self._lock:
            unknown = [n for n in self._names if n not in self._known]
        pending = [(n, self.zk.get_async(layout.node(n))) for n in unknown]
        for name, res in pending:
            try:
                info = NodeInfo.from_bytes(res.get()[0])
            except NoNodeError:
                continue
            with self._lock:
                if name in self._names:
                    self._known[name] = info
                    self.version += 1
        with self._lock:
            return sorted((n for n in self._known.values()
                           if serving(n, role, rack)),
                          key=lambda n: n.name)


def compute_nodes(zk, rack: str | None = None) -> list[NodeInfo]:
    return members(zk, "compute", rack)


class LocalGatherer(Gatherer):
    def offers(self, zk, request, group, flavor, want, trace):
        out = [node_offer(zk, n, group, flavor, want) for n in compute_nodes(zk)]
        for o in out:
            trace.racks.setdefault(o.rack, {"leader": None, "offers": {}})["offers"][o.node] = o.count
        return out


class HandshakeGatherer(Gatherer):
    """The coordinator's side: every compute rack leader in parallel (its own
    rack answered in-process by ``local_rack``). Up to 128 racks in one wave
    (the pool makes its threads as they are needed): with 32, 100 racks were
    asked in four waves, each as long as its slowest rack under load.

    The rack leaders are read once and kept until the membership changes
    (``forget_leaders``, which the agent calls when its peer directory sees
    nodes come or go: a leader only changes when its node leaves) or for
    ``LEADERS_SECONDS``. Reading them is four waves of reads (racks, their
    election folders, the leaders' lock znodes, their records: ~300 at 100
    racks), and at 1,000 fake agents on two cores the offer round spent
    0.1-1.0 s outside its racks' answers (bench/README.md, session 18).
    What keeps kept leaders honest:
    - a rack of the compute nodes (``racks``: the agent's peer directory)
      that has no kept leader -- new, or without one when they were read --
      is read on every round until it has one;
    - a kept leader that does not answer has its rack read anew, and when
      another node (or address) leads it now, that one is asked in the same
      round and kept instead: a leader that changed costs its rack a second
      call, not its offers;
    - a read that a membership change overtook is used, not kept."""

    def __init__(self, me: str, local_rack=None, pool_size: int = 128, local_release=None,
                 racks: Callable[[], set[str]] | None = None):
        self.me = me
        self.local_rack = local_rack    # callable(body) -> rack answer, for the coordinator's rack
        self.local_release = local_release   # callable(request): the same for releases
        self.racks = racks              # callable() -> the racks that have compute nodes (None: unknown)
        self.pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="handshake")
        self._lock = threading.Lock()
        self._leaders: tuple[dict[str, NodeInfo], float] | None = None   # (rack -> leader, monotonic time read)
        self._generation = 0            # one more on every forget: a read from an older one is not kept

    def forget_leaders(self) -> None:
        """The membership changed: the next round reads the leaders again."""
        with self._lock:
            self._leaders = None
            self._generation += 1

    def _keep(self, generation: int, found: dict[str, NodeInfo], read_at: float | None = None) -> None:
        """Keep ``found`` (rack -> leader): as all the leaders, read at
        ``read_at``, when that is given, else over the kept ones -- unless a
        forget came since ``generation``."""
        with self._lock:
            if self._generation != generation:
                return
            if read_at is not None:
                self._leaders = (dict(found), read_at)
            elif self._leaders is not None:
                self._leaders = ({**self._leaders[0], **found}, self._leaders[1])

    def leaders(self, zk) -> dict[str, NodeInfo]:
        """rack -> its compute leader: as kept, with the racks that have none read anew."""
        with self._lock:
            kept, generation = self._leaders, self._generation
        if kept is None or time.monotonic() - kept[1] >= LEADERS_SECONDS:
            read_at = time.monotonic()
            leaders = rack_leaders(zk, "compute")
            self._keep(generation, leaders, read_at)
            return leaders
        leaders = kept[0]
        try:
            missing = (self.racks() if self.racks else set()) - leaders.keys()
        except Exception:              # no view of the racks now: the kept ones
            missing = set()
        if missing:
            found = rack_leaders(zk, "compute", sorted(missing))
            if found:
                leaders = {**leaders, **found}
                self._keep(generation, found)
        return leaders

    def offers(self, zk, request, group, flavor, want, trace):
        with self._lock:
            generation = self._generation
        t0 = time.monotonic()
        leaders = self.leaders(zk)
        trace.leaders_ms = round((time.monotonic() - t0) * 1000, 1)
        body = {"request": request, "group": group, "flavor": flavor.to_dict(), "want": want,
                # a retry after a lost commit: the nodes whose folder guard failed
                # read their basis anew (KeptBasis); the rest keep theirs
                "fresh": list(trace.stale_nodes)}

        def call(leader: NodeInfo) -> dict:
            if leader.name == self.me and self.local_rack is not None:
                return self.local_rack(body)
            return post(leader.address, P2P.RACK_OFFERS, body)

        def ask(rack: str, leader: NodeInfo) -> tuple[str, dict]:
            t0 = time.monotonic()
            try:
                try:
                    answer = call(leader)
                except Exception:
                    # the kept leader may be gone or no longer lead: ask
                    # again only a leader that is not the one that failed
                    fresh = rack_leaders(zk, "compute", [rack]).get(rack)
                    if fresh is None or (fresh.name, fresh.address) == (leader.name, leader.address):
                        raise
                    self._keep(generation, {rack: fresh})
                    leader = fresh
                    answer = call(leader)
                entry = {"leader": leader.name, "offers": {o["node"]: o["count"] for o in answer["offers"]}}
                entry.update({k: v for k, v in answer.items() if k in ("errors",)})
            except Exception as exc:   # a rack that cannot answer offers nothing this round
                answer, entry = {"offers": []}, {"leader": leader.name, "offers": {},
                                                 "error": f"{type(exc).__name__}: {exc}"[:200]}
            entry["ms"] = round((time.monotonic() - t0) * 1000, 1)
            return rack, dict(answer, _trace=entry)

        results = list(self.pool.map(lambda kv: ask(*kv), leaders.items()))
        out = []
        for rack, answer in results:
            trace.racks[rack] = answer["_trace"]
            out.extend(NodeOffer.from_dict(o) for o in answer["offers"])
        return out

    def release(self, zk, request):
        def tell():
            for rack, leader in self.leaders(zk).items():
                try:
                    if leader.name == self.me and self.local_release is not None:
                        self.local_release(request)      # in-process, like its offers
                    else:
                        post(leader.address, P2P.RELEASE, {"request": request}, timeout=1)
                except Exception:
                    pass               # reservations expire anyway
        self.pool.submit(tell)
