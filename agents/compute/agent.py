"""The compute agent: runs the instances assigned to its node.

It watches its own assignment folder (kazoo TreeCache) and reconciles four
things against it: libvirt domains, qcow2 overlays, image sessions and
instance records. To start an instance it asks a storage rack leader where
the image is (``_locate``), attaches the image once per host
(``sessions.py``: qemu-storage-daemon, iSCSI in, NBD out) and backs the
instance's overlay by that session.
An assignment exists exactly while the instance belongs on this node; its
data says ``run`` or ``terminate``. Only this agent removes it, after the
domain and overlay are gone, so a crash at any point is finished by the next
reconcile (at start, on every event, and periodically).
"""
from __future__ import annotations

import base64
import copy
import dataclasses
import os
import random
import re
import secrets
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from kazoo.recipe.cache import TreeCache, TreeEvent

from cowfleet.agents import metrics
from cowfleet.agents.compute.domain import DomainSpec
from cowfleet.agents.compute.hypervisor import Hypervisor, domain_name
from cowfleet.agents.compute.instance_network import InstanceNetwork
from cowfleet.agents.compute.network import (AddressesExhausted, FakeNodeNetwork, LinuxBridgeNetwork, bridge_name,
                                             tap_name)
from cowfleet.agents.compute.overlays import FakeOverlayStore, OverlayStore
from cowfleet.agents.compute.sessions import (FakeSessionManager, Session, SessionManager,
                                              base_of, qcow2_backing, session_key)
from cowfleet.agents.compute.instance_events import InstanceEvents
from cowfleet.agents.compute.savefile import SaveImageError
from cowfleet.agents.compute.seed import SeedData, SeedStore
from cowfleet.agents.compute.spares import Spare, SparePool
from cowfleet.agents.compute.templates import Template, TemplateError, TemplateStore, template_key
from cowfleet.agents.node import RECONCILE_SECONDS, NodeAgent
from cowfleet.agents.p2p_server import P2PServer
from cowfleet.agents.handshake import HandshakeGatherer, KeptBasis, PeerDirectory, Reservations, offer_from
from cowfleet.agents.placement import Placer, flavor_or_default
from cowfleet import defaults, network as netdef
from cowfleet.faults import fault_point
from cowfleet.guest.builder import READY_MARKER
from cowfleet.models import (CONSOLE_TAIL_MAX, Event, EventReason, EventType, Flavor, Group, Image, Instance,
                             InstanceState, Reason, Replica, now, valid_instance_id)
from cowfleet.p2p import post
from cowfleet.protocol import P2P, Assignment, LocateAnswer, replica_location
from cowfleet.zk import events, layout
from cowfleet.zk.connection import read, read_children, read_later, update_from
from cowfleet.zk.groups import finish_delete_if_empty
from cowfleet.zk.leaders import rack_leaders

READY_POLL = 0.25
# routes to the peers' instance subnets made again this often when no peer
# changed (a route someone removed by hand comes back within it)
ROUTES_RESYNC_SECONDS = 60.0
OVERLAY_TRIES = 5          # overlay creations failing in a row before an instance is failed
# a template that failed (no marker in time, a save refused) is not tried again before this
# (seconds): each try of an image without the warm-clone contract waits its whole timeout
TEMPLATE_RETRY = 600
FAILOVER = "session:"      # the in-flight key of a session's failover (never an instance id)
SPARE = "spare:"           # the in-flight key of making a warm spare (one at a time)


class _ReplicasSeen:
    """Where images are, as this agent sees it: ``sessions.Replicas`` for
    the session choice (``SessionManager.choose`` and ``heal``)."""

    def __init__(self, agent: "ComputeAgent"):
        self.agent = agent

    def recorded(self, session: Session) -> bool:
        return self.agent._replica_recorded(session)

    def locate(self, image: str) -> LocateAnswer | None:
        return self.agent._locate(image)

    def in_use(self, key: str) -> bool:
        return key in self.agent._session_users(key)


class ComputeAgent(NodeAgent):
    role = "compute"

    def __init__(self, *args, hypervisor: Hypervisor, vcpus: int | None = None,
                 memory_mib: int | None = None, network: str = "routed", workers: int = 16,
                 node_network: str | None = None, bridge: str | None = None, node_ip: str | None = None,
                 instance_cidr: str | None = netdef.LAB_INSTANCE_CIDR, seeds: bool = True,
                 warm_spares: int = 0, placement_zk=None, **kw):
        super().__init__(*args, **kw)
        self.hyper = hypervisor
        fake = hypervisor.virt_type == "fake"
        self.overlays = (FakeOverlayStore if fake else OverlayStore)(Path(self.state_dir) / "overlays")
        self.sessions = (FakeSessionManager if fake else SessionManager)(Path(self.state_dir) / "sessions")
        self.replicas = _ReplicasSeen(self)          # what the session choice asks (sessions.Replicas)
        self.seeds = SeedStore(Path(self.state_dir) / "seeds")
        self.templates = TemplateStore(Path(self.state_dir) / "templates", hypervisor, self.name,
                                       self.overlays.layer)
        self.template_failures: dict[str, tuple[float, str]] = {}   # key -> (when, why)
        # warm spares: clones restored ahead, paused, claimed by starts (spares.py)
        self.spares = SparePool(Path(self.state_dir) / "spares", hypervisor, self.name, self.overlays,
                                self.templates, per_template=warm_spares)
        self.spare_failures: dict[str, float] = {}                  # template key -> when making one failed
        # A restore (qemu's start, the memory stream) and a clone's first
        # seconds are CPU work: 16 at once on 2 cores made every clone of a
        # group wait for all (first ready 17.3 s, p50 19.3 s, all 19.6 s);
        # two at a time gave first ready 4.4 s, p50 14.0 s, all 21.0 s
        # (bench/README.md, TCG)
        self.restores = threading.BoundedSemaphore(
            int(os.environ.get("COWFLEET_PARALLEL_RESTORES") or os.cpu_count() or 1))
        self.make_seeds = seeds       # False: no NoCloud seed (benchmarks compare against it)
        self.consoles = Path(self.state_dir) / "consoles"
        self.consoles.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o755)
        if network not in ("routed", "user", "none"):
            raise ValueError(f"network must be routed, user or none, not {network!r}")
        self.network = network
        self.instnet: InstanceNetwork | None = None
        if network == "routed":
            # the node's address, next hop for its instance subnet: the P2P host
            self.node_ip = node_ip or self._listen.rpartition(":")[0].strip("[]") or None
            kind = node_network or ("fake" if fake else "linux")
            bridge = bridge or bridge_name(self.name)
            net = FakeNodeNetwork(bridge) if kind == "fake" else \
                LinuxBridgeNetwork(bridge, owner=str(Path(self.state_dir).resolve()))
            self.instnet = InstanceNetwork(self.zk, self.name, self.node_ip, net, instance_cidr)
        self._vcpus = vcpus or (os.cpu_count() or 1) * 8          # vCPUs overcommit 8:1
        self._memory = memory_mib or max(512, _host_memory_mib() - 1024)
        # libvirt starts and destroys run in parallel well (one connection a thread),
        # and a destroy of a TCG guest blocks ~2 s: a burst of them should not queue
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="instance")
        self.inflight: dict[str, str] = {}                 # id -> what runs for it (_start, ...)
        self.asked_meanwhile: set[str] = set()             # ids asked something else meanwhile
        self.inflight_lock = threading.Lock()
        self.awaiting: dict[str, tuple[str, float]] = {}   # id -> (group, deadline: time.time())
        self.awaiting_lock = threading.Lock()
        self.awaited = threading.Event()     # an instance added to ``awaiting``
        # instances whose record an adopt read and found nothing to do for,
        # their domain running and not paused: later rounds leave them be
        # while that holds (see reconcile)
        self.settled: set[str] = set()
        self.started: dict[str, float] = {}   # id -> when its domain started (time.monotonic()), for a minute
        # id -> its record and znode version as this agent last read or wrote
        # it: a state change starts from it, not from a read (``update_from``;
        # a stale one fails the version guard and is read anew). A start's
        # three state writes each read the record first before: 3 of ~13
        # ZooKeeper operations an instance start made
        self.known: dict[str, tuple[Instance, int]] = {}
        self.known_lock = threading.Lock()
        # Started and Ready in a burst go merged (instance_events.py)
        self.instance_events = InstanceEvents(
            lambda group, event: events.record_safely(self.zk, group, event, self.log))
        self._routes_synced = (-1, 0.0)     # (peer directory version, monotonic time) of the last clean sync
        self.overlay_failures: dict[str, int] = {}         # id -> failed overlay creations in a row
        self._io_resumes: dict[str, list[float]] = {}      # id -> its recent resumes after I/O errors
        self.reservations = Reservations()
        self.gatherer = HandshakeGatherer(
            self.name, self.rack_offers, local_release=lambda request: self.release({"request": request}),
            racks=lambda: {n.rack for n in self.peers.nodes("compute")})
        # the coordinator's reads, lock and commits; its own session only in
        # a fleet whose agents share one (agents/fleet.py): there the
        # transactions queued behind 20 agents' instance starts
        self.placer = Placer(placement_zk or self.zk, self.name, self.gatherer)
        self.coordinating = ThreadPoolExecutor(max_workers=4, thread_name_prefix="coordinate")
        self.handshake_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="offers")
        self._allocated = {"vcpus": 0, "memory_mib": 0, "instances": 0}

    # -- membership -----------------------------------------------------------
    def capacity(self):
        return {"vcpus": self._vcpus, "memory_mib": self._memory}

    def allocated(self):
        return dict(self._allocated)

    def extra_info(self):
        info = {"virt_type": self.hyper.virt_type, "warm_spares": sum(self.spares.count().values())}
        if self.instnet is not None and self.instnet.ready:
            info.update(subnet=self.instnet.subnet, node_ip=self.node_ip)
        return info

    # -- set-up ---------------------------------------------------------------
    def start(self) -> None:
        path = layout.assignments(self.name)
        self.zk.ensure_path(path)
        self.cache = TreeCache(self.zk, path)
        self.cache.listen(self._on_tree_event)
        self.cache.start()
        self.basis = KeptBasis(self.zk, self.name, self.cache)     # what offers count
        # no watch on the request queue: requests come by hand-off, and the
        # queue is only for those left over after a grace period (checked on
        # every leader round); waking every leader on each request would
        # only make them all read ZooKeeper at the busiest moment
        self.peers = PeerDirectory.shared(self.zk, on_change=self._on_nodes)   # a node gone: re-place soon
        if self.instnet is not None:
            self.instnet.setup()          # before registering: peers learn the subnet with the node
        for gone in self.spares.sweep():        # an earlier life's spares (before their templates)
            self.log.info("swept warm spare %s", gone)
        for gone in self.templates.sweep():     # an earlier life died making a template
            self.log.info("swept half-made warm-clone template %s", gone)
        threading.Thread(target=self._readiness_loop, name="readiness", daemon=True).start()
        self.hyper.watch_domains(self._on_io_error, self._on_stopped)

    def _on_tree_event(self, event) -> None:
        if event.event_type in (TreeEvent.NODE_ADDED, TreeEvent.NODE_UPDATED, TreeEvent.NODE_REMOVED,
                                TreeEvent.INITIALIZED):
            self.wake.set()

    def _on_nodes(self, children) -> None:
        self.placer.forget_leaders()      # a leader may have come or gone with them
        self.gatherer.forget_leaders()
        if children and hasattr(self, "leader_wake"):
            self.leader_wake.set()
        if self.instnet is not None:
            self.wake.set()               # routes to a new or departed peer

    # -- leader work ----------------------------------------------------------
    def lead_once(self) -> None:
        self.placer.process_requests()
        self.placer.reconcile_all()

    # -- the hand-shake (P2P) -------------------------------------------------
    def p2p_routes(self, server: P2PServer) -> None:
        super().p2p_routes(server)
        for path, handler in ((P2P.OFFER, self.offer), (P2P.RACK_OFFERS, self.rack_offers_p2p),
                              (P2P.RELEASE, self.release), (P2P.DEPLOY, self.deploy),
                              (P2P.CONSOLE, self.console)):
            server.json_route(path, handler)

    def console(self, body: dict) -> tuple[int, dict]:
        """The tail of an instance's serial console (GET .../console)."""
        iid = str(body.get("id", ""))
        if not valid_instance_id(iid):
            return 400, {"detail": "id must name an instance"}
        try:
            tail = max(0, min(int(body.get("tail_bytes", 65536)), CONSOLE_TAIL_MAX))
        except (TypeError, ValueError):
            return 400, {"detail": "tail_bytes must be an integer"}
        path = self.consoles / f"{iid}.log"
        try:
            with open(path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - tail))
                data = fh.read(tail)
        except FileNotFoundError:
            return 404, {"detail": f"no console of instance {iid} on {self.name}"}
        return 200, {"id": iid, "node": self.name, "size": size, "text": data.decode(errors="replace")}

    def offer(self, body: dict) -> tuple[int, dict]:
        """How many instances of the flavor this node takes; held for a while."""
        flavor = Flavor(**body["flavor"])
        request = str(body["request"])
        reserved = self.reservations.held_by_others(request)
        # named in fresh: our folder guard failed a commit, so our cache may lag
        basis = self.basis.current(fresh=self.name in (body.get("fresh") or ()))
        o = offer_from(basis, self.node_info(), str(body.get("group", "")), flavor,
                       int(body["want"]), reserved)
        self.reservations.hold(request, o.count * flavor.vcpus, o.count * flavor.memory_mib)
        return 200, asdict(o)

    def rack_offers(self, body: dict) -> dict:
        """As rack leader: ask every compute agent of the rack, in parallel."""
        nodes = self.peers.nodes("compute", self.rack)

        def ask(node):
            if node.name == self.name:
                return self.offer(body)[1]
            return post(node.address, P2P.OFFER, body)
        offers, errors = [], {}
        futures = {n.name: self.handshake_pool.submit(ask, n) for n in nodes if n.address}
        for name, fut in futures.items():
            try:
                offers.append(fut.result())
            except Exception as exc:    # an agent that cannot answer offers nothing
                errors[name] = f"{type(exc).__name__}"
                self.peers.forget(name)
        return {"rack": self.rack, "leader": self.name, "offers": offers, "errors": errors}

    def rack_offers_p2p(self, body: dict) -> tuple[int, dict]:
        if not self.leading.is_set():
            return 409, {"detail": f"{self.name} does not lead rack {self.rack}"}
        return 200, self.rack_offers(body)

    def release(self, body: dict) -> tuple[int, dict]:
        request = str(body["request"])
        self.reservations.release(request)
        if self.leading.is_set() and body.get("forward", True):
            for node in self.peers.nodes("compute", self.rack):
                if node.name != self.name and node.address:
                    self.handshake_pool.submit(post, node.address, P2P.RELEASE,
                                               {"request": request, "forward": False}, 1)
        return 200, {"released": request}

    def deploy(self, body: dict) -> tuple[int, dict]:
        """The service's fast path: coordinate this request now."""
        if not self.leading.is_set():
            return 409, {"detail": f"{self.name} does not lead rack {self.rack}"}
        seq = str(body["request"])
        if "/" in seq or not seq.startswith("req-"):
            return 400, {"detail": "request must name a queued request (req-NNN)"}
        self.coordinating.submit(self._coordinate, seq)
        return 202, {"request": seq, "coordinator": self.name}

    def _coordinate(self, seq: str) -> None:
        try:
            self.placer.handle(seq, via="hand-off")
        except Exception:
            self.log.exception("coordinating %s failed; a leader will claim it from the queue", seq)

    # -- reconcile ------------------------------------------------------------
    def desired(self) -> dict[str, tuple[str, str, dict]] | None:
        """instance id -> (group, assignment child, Assignment), from the cache."""
        path = layout.assignments(self.name)
        children = self.cache.get_children(path)
        if children is None:
            return None          # cache not initialised yet: decide nothing
        out = {}
        for child in children:
            node = self.cache.get_data(f"{path}/{child}")
            if node is None:
                continue
            group, iid = layout.parse_assignment(child)
            out[iid] = (group, child, Assignment.from_bytes(node.data))
        return out

    def reconcile(self) -> None:
        desired = self.desired()
        if desired is None:
            return
        if self.instnet is not None:
            self._reconcile_network(desired)
        listed_at = time.monotonic()
        domains = self.hyper.list(self.name)
        overlays = self.overlays.list()
        use = {"vcpus": 0, "memory_mib": 0, "instances": 0}
        for iid, (group, _child, assignment) in desired.items():
            if assignment.runs:
                use["vcpus"] += assignment.vcpus
                use["memory_mib"] += assignment.memory_mib
                use["instances"] += 1
                if self.started.get(iid, 0.0) > listed_at:
                    # started while we listed: the listing is older than its
                    # domain, which it may miss (a second start would run it
                    # twice) or show paused before its resume (an adopt would
                    # destroy it as an interrupted clone). A burst of
                    # warm-spare claims, 0.1-0.4 s each, met both windows
                    self.wake.set()
                    continue
                if iid not in domains or not domains[iid].running:
                    self.settled.discard(iid)
                    self._submit(iid, self._start, group, iid)
                elif iid not in self.settled or domains[iid].paused:
                    # an adopt reads the instance's record: every round, for
                    # every instance, that was 20 ZooKeeper reads a second
                    # per 100 instances for nothing (10,000 fake instances
                    # kept a fleet busy between placements, bench/placement.py)
                    self._submit(iid, self._adopt, group, iid, domains[iid])
            else:
                self._submit(iid, self._terminate, group, iid)
        self._allocated = use
        for iid in [i for i, t in list(self.started.items()) if t < listed_at - 60]:   # starts add meanwhile
            self.started.pop(iid, None)
        with self.known_lock:                   # records of instances no longer ours
            for iid in [i for i in self.known if i not in desired]:
                del self.known[iid]
        # anything of ours with no assignment: a leftover of a crash or a drop
        for iid, dom in domains.items():
            if iid not in desired:
                self._submit(iid, self._terminate, dom.group, iid)
        for iid, (group, _path) in overlays.items():
            if iid not in desired and iid not in domains:
                self._submit(iid, self._terminate, group, iid)
        for iid, (group, _path) in self.seeds.list().items():
            if iid not in desired and iid not in domains and iid not in overlays:
                self._submit(iid, self._terminate, group, iid)
        self._reconcile_sessions(overlays)
        current = self._template_current()      # one read of each template's image this round, for both
        self._keep_spares(desired, domains, current)
        self._prune_templates(current)
        if self.zk.connected:     # (cut off meanwhile: the next round reads it)
            self.basis.current()  # read now, if the assignments moved, rather than in the next offer round

    def _reconcile_network(self, desired: dict) -> None:
        """The subnet claimed and the bridge up; the allocations read back
        once (before any start hands out an address); peers' routes kept."""
        net = self.instnet
        if not net.ready and not net.setup():
            return
        if not net.loaded:
            net.load([(g, iid) for iid, (g, _c, _d) in desired.items()])
        with self.inflight_lock:
            busy = set(self.inflight)
        for iid in net.pool.in_use():
            if iid not in desired and iid not in busy:
                net.release(iid)         # its terminate ran in an earlier life of the agent
        version, synced = self._routes_synced
        if not self.peers.changed_since(version) and time.monotonic() - synced < ROUTES_RESYNC_SECONDS:
            # the same peers as at the last sync, which had no error: an
            # agent's every round routed every peer again before, O(peers) a
            # round and O(peers^2) for the cluster: 1,000 fake agents spent
            # most of 2 cores on it while idle (bench/placement.py)
            return
        peers = self.peers.nodes("compute")
        version = self.peers.version
        complete = True
        for p in peers:
            if not p.subnet:
                self.peers.forget(p.name)    # read again next round: it may have claimed one since
                complete = False
        errors = net.sync_routes(peers)
        for e in errors:
            self.log.warning("instance network: %s", e)
        self._routes_synced = (version, time.monotonic()) if complete and not errors else (-1, 0.0)

    def _reconcile_sessions(self, overlays: dict) -> None:
        """Sessions no overlay on disk uses are stopped; daemons under our
        folder that no session accounts for (a lost pid file) are killed.
        Used sessions whose daemon died are restarted by the next start."""
        used = {self.sessions.key_of_overlay(path) for _group, path in overlays.values()}
        used |= self.templates.session_keys()     # every clone's and spare's disk reads through its template's
        for key in self.sessions.list():
            if key in used:
                continue
            lock = self.sessions.lock(base_of(key))
            if not lock.acquire(blocking=False):
                continue                  # being attached right now
            try:
                if key not in self._session_users(key):
                    self.log.info("stopping unused image session %s", key)
                    self.sessions.stop(key)
            finally:
                lock.release()
        for pid, key in self.sessions.kill_orphans():
            self.log.info("killed orphan qemu-storage-daemon %d (session %s)", pid, key)
        for link in self.sessions.sweep_links():
            self.log.info("removed the short link %s of a session folder that is gone", link)
        self._check_sessions(used)

    def _session_users(self, key: str) -> set[str]:
        """The keys used by overlays on disk, read now (call under lock(base_of(key)))."""
        return {self.sessions.key_of_overlay(path) for _g, path in self.overlays.list().values()} | \
            self.templates.session_keys()

    def _submit(self, iid: str, fn, *args) -> None:
        """Run ``fn`` for the instance unless something runs for it already;
        if that is something else (an adopt or a start, and now a terminate),
        reconcile again as soon as it ends rather than a whole round later."""
        with self.inflight_lock:
            if iid in self.inflight:
                # e.g. a terminate during a start; or a failover asked again while one runs
                # (a guest paused again after it listed them: once measured to wait 5 s for a round)
                if self.inflight[iid] != fn.__name__ or iid.startswith(FAILOVER):
                    self.asked_meanwhile.add(iid)
                return
            self.inflight[iid] = fn.__name__

        def run():
            try:
                fn(*args)
            except Exception:
                self.log.exception("%s of %s failed", fn.__name__.strip("_"), iid)
            finally:
                with self.inflight_lock:
                    self.inflight.pop(iid, None)
                    again = iid in self.asked_meanwhile
                    self.asked_meanwhile.discard(iid)
                if again:
                    self.wake.set()
        self.pool.submit(run)

    # -- instance life-cycle --------------------------------------------------
    def _set_state(self, group: str, iid: str, state: str, message: str = "", reason: str = "",
                   **fields) -> Instance | None:
        """Write the instance's state, message and reason (a models.Reason);
        ``state_since`` moves when the state or the reason changes, and then
        the group gets an event (Waiting, Started, Ready, Failed). Returns
        the record written (None: nothing changed, or it is gone)."""
        before: list[tuple[str, str]] = []

        def change(inst: Instance):
            if inst.state == InstanceState.TERMINATING and state != InstanceState.TERMINATING:
                return None            # the leader decided: never resurrect
            if inst.state == state and inst.message == message and inst.reason == reason and not fields:
                return None
            before[:] = [(inst.state, inst.reason)]
            if inst.state != state or inst.reason != reason or inst.state_since is None:
                inst.state_since = now()
            inst.state, inst.message, inst.reason = state, message, reason
            for k, v in fields.items():
                setattr(inst, k, v)
            return inst
        with self.known_lock:
            known = self.known.get(iid)
        got = update_from(self.zk, layout.group_instance(group, iid), Instance, change, known)
        written = got[0] if got else None
        if got is not None:
            self._remember(iid, got)
        if written is not None and before and before[0] != (state, reason):
            self._instance_event(written)
        return written

    def _remember(self, iid: str, got: tuple[Instance, int] | None) -> None:
        """Keep the record (and version) just read or written: None forgets it."""
        with self.known_lock:
            if got is None:
                self.known.pop(iid, None)
            elif iid not in self.known or self.known[iid][1] <= got[1]:   # never an older one
                self.known[iid] = (copy.copy(got[0]), got[1])     # a copy: callers change theirs

    def _instance_event(self, inst: Instance) -> None:
        """The group's event for an instance's new state (best effort: the
        state is written already)."""
        if inst.state == InstanceState.RUNNING:
            reason, text = EventReason.STARTED, f"domain started on {self.name}" + (
                f", address {inst.address}" if inst.address else "")
        elif inst.state == InstanceState.READY:
            took = f" {inst.ready_at - inst.running_at:.1f} s after its start" if inst.ready_at and inst.running_at \
                else ""
            reason, text = EventReason.READY, f"guest ready{took}"
        elif inst.state == InstanceState.FAILED:
            reason, text = EventReason.FAILED, f"{inst.reason or 'Failed'}: {inst.message}"
        elif inst.state == InstanceState.PENDING and inst.reason:
            reason, text = EventReason.WAITING, f"{inst.reason}: {inst.message}"
        else:
            return
        warning = inst.state in (InstanceState.FAILED, InstanceState.PENDING)
        self.instance_events.add(inst.group, Event(
            reason=reason, message=text, type=EventType.WARNING if warning else EventType.NORMAL,
            instance=inst.id, node=self.name, generation=inst.generation, source=self.name))

    def _locate(self, image: str) -> LocateAnswer | None:
        """Where the image is (seed 001 steps 6-8): ask a storage rack leader
        (this rack's first), who asks the other leaders, who ask their
        agents. If no leader answers, the replica records in ZooKeeper."""
        # first the leaders of the racks of the storage nodes this agent knows
        # (its peer directory: no read, but what it holds of their health may
        # be old); every rack's when it knows none, or none of those answered
        known = {n.rack for n in self.peers.nodes("storage")}
        body = {"image": image, "rack": self.rack, "node": self.name}
        asked: set[str] = set()
        for racks in ([known, None] if known else [None]):
            leaders = {r: n for r, n in rack_leaders(self.zk, "storage", racks).items() if n.name not in asked}
            order = [leaders.pop(self.rack)] if self.rack in leaders else []
            rest = list(leaders.values())
            random.shuffle(rest)
            for leader in order + rest:
                asked.add(leader.name)
                try:
                    return LocateAnswer.from_dict(post(leader.address, P2P.LOCATE, body, timeout=10))
                except Exception as exc:
                    self.log.warning("storage leader %s did not answer: %s", leader.name, exc)
        got = read(self.zk, layout.image(image), Image)
        if got is None:
            return None
        replicas = [replica_location(r.to_dict())
                    for r, _ in read_children(self.zk, layout.image_replicas(image), Replica)
                    if r.target and r.sha256 == got[0].sha256]
        replicas.sort(key=lambda r: r["rack"] != self.rack)
        return LocateAnswer(image=image, format=got[0].format, sha256=got[0].sha256,
                            min_replicas=got[0].min_replicas, replicas=replicas, answered_by="zookeeper")

    def _start(self, group: str, iid: str) -> None:
        """Start the instance in named steps (a step that stops says why on
        the instance's record; the fault points sit between them): read what
        it needs, allocate its address, attach the image's session, keep or
        make its overlay, write its seed, define and start its domain."""
        what = self._start_inputs(group, iid)
        if what is None:
            return
        inst, image, flavor, spec_group = what
        addressing = self._address(inst)
        if addressing is None:
            return
        address, mac = addressing
        fault_point("start.allocated", self.name)
        # the address is on the record before the domain starts
        self._set_state(group, iid, InstanceState.STARTING, address=address, mac=mac)
        fault_point("start.addressed", self.name)
        t0 = time.monotonic()
        base = session_key(image.name, image.sha256)
        with self.sessions.lock(base):     # attach + overlay, atomic w.r.t. the last user's detach
            session, attached = self._attach(group, iid, image)
            if session is None:
                return
            overlay = self._keep_overlay(group, iid, image, session, bool(spec_group and spec_group.persistent))
            t_attached = time.monotonic()
            fault_point("start.attached", self.name)
            template, why, spare = None, "", None
            if not overlay.exists():
                template, why = self._clone_template(spec_group, image, flavor, session)
                spare = self.spares.take(template.key) if template else None
                mac = spare.mac if spare is not None and spare.mac else mac   # the spare's NIC is the instance's
                if spare is None:     # with a spare, its overlay becomes the instance's when claimed
                    overlay = self._create_clone_overlay(group, iid, template) if template else None
                if spare is None and overlay is None:
                    if template is not None:
                        why = f"no overlay on template {template.key} (removed meanwhile, or qemu-img failed)"
                    template = None
                    overlay = self._create_overlay(group, iid, image, session)
        t_overlay = time.monotonic()
        try:
            fault_point("start.overlay", self.name)
            seed = self.seeds.create(group, iid, self._seed_data(inst, spec_group, address, mac), self.name) \
                if self.make_seeds else None
            t_seed = time.monotonic()
            fault_point("start.seeded", self.name)
            if spare is not None:
                overlay, why = self._claim_spare(group, iid, flavor, overlay, seed, mac, spare, image, session)
        except BaseException:
            if spare is not None:
                # taken, never claimed (or a failed claim, which cleaned up:
                # dropping again is a no-op): no longer in the pool to sweep
                self.spares.drop(spare)
            raise
        if spare is None and template is not None:
            overlay, why = self._restore_clone(group, iid, flavor, overlay, seed, mac, template, image, session)
        if template is None or why:
            self._define_and_start(group, iid, flavor, overlay, seed, mac)
        t_domain = self.started[iid] = time.monotonic()
        fault_point("start.domain", self.name)
        running_at = now()
        self._set_state(group, iid, InstanceState.RUNNING, running_at=running_at, ready_at=None,
                        start="boot" if template is None or why else "clone", start_reason=why, mac=mac)
        # the metrics' data path: this start attached the image, or used the host's running session
        self.metrics.started(iid, metrics.ATTACHED if attached else metrics.SHARED, t_domain - t0)
        self.log.info("%s running: session %.0f ms, overlay %.0f ms, seed %.1f ms, domain %.0f ms", iid,
                      (t_attached - t0) * 1000, (t_overlay - t_attached) * 1000, (t_seed - t_overlay) * 1000,
                      (t_domain - t_seed) * 1000)
        self._await(iid, group, running_at + _ready_timeout(spec_group))

    def _start_inputs(self, group: str, iid: str) -> tuple[Instance, Image, Flavor, Group | None] | None:
        """The instance's record, its image (holding data), its flavor and its
        group's spec; None when it is not to start now (the record says why).
        Read in two round trips (the record and the group's spec; then the
        image and the flavor the record names), not four one after another."""
        inst_at = read_later(self.zk, layout.group_instance(group, iid), Instance)
        group_at = read_later(self.zk, layout.group(group), Group)
        got, g = inst_at(), group_at()
        self._remember(iid, got)
        if got is None:
            return None
        inst = got[0]
        if inst.state in (InstanceState.TERMINATING, InstanceState.FAILED):
            return None   # failed stays failed (visible); the group shows it as degraded
        image_at = read_later(self.zk, layout.image(inst.image), Image)
        flavor_at = read_later(self.zk, layout.flavor(inst.flavor), Flavor)
        got, flavor = image_at(), flavor_or_default(flavor_at(), inst.flavor)
        if got is None or not got[0].sha256:
            self._set_state(group, iid, InstanceState.PENDING, f"waiting for image '{inst.image}' to hold data",
                            Reason.IMAGE_NO_DATA)
            return None
        image = got[0]
        if flavor is None:
            self.metrics.failure("flavor-missing")
            self._set_state(group, iid, InstanceState.FAILED, f"flavor '{inst.flavor}' does not exist",
                            Reason.FLAVOR_NOT_FOUND)
            return None
        return inst, image, flavor, (g[0] if g else None)

    def _attach(self, group: str, iid: str, image: Image) -> tuple[Session | None, bool]:
        """The host's session of the image (``SessionManager.choose``), and
        whether this start attached it; None when there is none to attach
        now (shown). Under ``sessions.lock`` of the image."""
        choice = self.sessions.choose(image.name, image.sha256, image.format, self.replicas)
        if choice.wait == "no-replica":
            self._set_state(group, iid, InstanceState.PENDING,
                            f"waiting for a replica of image '{image.name}' reachable from {self.name}",
                            Reason.NO_REPLICA)
        elif choice.wait:
            self.metrics.failure("session-attach")
            self._set_state(group, iid, InstanceState.PENDING, f"cannot attach image: {choice.error}"[:500],
                            Reason.ATTACH_FAILED)
        return choice.session, choice.attached

    def _keep_overlay(self, group: str, iid: str, image: Image, session: Session, persistent: bool) -> Path:
        """The instance's overlay path, its file kept only for a persistent
        instance of the same image (moved onto ``session`` if it is backed by
        an older one); an ephemeral one's is removed."""
        overlay = self.overlays.path(group, iid)
        backed_by = self.sessions.key_of_overlay(overlay) if overlay.exists() else None
        same_image = backed_by and base_of(backed_by) == session_key(image.name, image.sha256)
        if overlay.exists() and not (persistent and same_image):
            self.overlays.remove(group, iid)     # ephemeral: a restart starts from the master
        elif overlay.exists() and backed_by != session.key:
            # persistent, on an older session of the same image (its storage
            # node serves it no more): the same bytes through the current one
            try:
                self.overlays.rebase(overlay, session.url, image.format)
            except Exception as exc:
                self.metrics.failure("overlay-rebase")
                self._set_state(group, iid, InstanceState.PENDING,
                                f"moving the persistent overlay to session {session.key} failed: {exc}"[:500],
                                Reason.OVERLAY_FAILED)
                raise
        return overlay

    def _create_overlay(self, group: str, iid: str, image: Image, session: Session) -> Path:
        try:
            overlay = self.overlays.create(group, iid, session.url, image.format)
        except Exception as exc:
            # often passing (the session's export just restarted): retried by the
            # next rounds, and shown; a few in a row mean it will not work
            tries = self.overlay_failures[iid] = self.overlay_failures.get(iid, 0) + 1
            self.metrics.failure("overlay")
            state = InstanceState.FAILED if tries >= OVERLAY_TRIES else InstanceState.PENDING
            self._set_state(group, iid, state, f"creating the overlay failed ({tries} of "
                            f"{OVERLAY_TRIES} tries): {exc}"[:500], Reason.OVERLAY_FAILED)
            raise
        self.overlay_failures.pop(iid, None)
        return overlay

    def _domain_spec(self, group: str, iid: str, flavor: Flavor, overlay: Path, seed: Path | None,
                     mac: str) -> DomainSpec:
        """The instance's domain (booted or cloned), its console emptied and
        a stopped leftover of the same name destroyed."""
        console = self.consoles / f"{iid}.log"
        console.unlink(missing_ok=True)
        network, bridge = self._nic()
        spec = DomainSpec(name=domain_name(self.name, iid), instance_id=iid, group=group,
                          node=self.name, vcpus=flavor.vcpus, memory_mib=flavor.memory_mib,
                          disk_path=str(overlay), console_log=str(console),
                          virt_type=self.hyper.virt_type, network=network, bridge=bridge,
                          tap=tap_name(iid) if network == "tap" else None,
                          mac=mac, seed_path=str(seed) if seed else None)
        self.hyper.destroy(spec.name)        # a stopped leftover of the same name
        return spec

    def _nic(self) -> tuple[str, str | None]:
        """The kind of NIC this node's domains get (DomainSpec.network) and its bridge."""
        if self.instnet is None:
            return self.network, None
        # agent and libvirtd in different network namespaces: a tap the agent puts on its bridge
        return ("tap" if self.hyper.foreign_taps else "bridge"), self.instnet.net.bridge

    def _define_and_start(self, group: str, iid: str, flavor: Flavor, overlay: Path, seed: Path | None,
                          mac: str) -> None:
        """The instance's domain, defined afresh (a stopped leftover of the
        same name is destroyed first) and started; its console starts empty."""
        spec = self._domain_spec(group, iid, flavor, overlay, seed, mac)
        try:
            self.hyper.start(spec, attach=self.instnet.net.attach if spec.tap else None)
        except Exception as exc:
            self.metrics.failure("domain-start")
            self._set_state(group, iid, InstanceState.FAILED, f"domain start failed: {exc}"[:500],
                            Reason.DOMAIN_START_FAILED)
            raise

    # -- warm clones (issue 13) ------------------------------------------------------
    def _clone_template(self, spec_group: Group | None, image: Image, flavor: Flavor,
                        session: Session) -> tuple[Template | None, str]:
        """The template this start restores from (made now when the node has
        none: under the image's session lock, so other starts of the image
        wait for it), or None and why it boots ("" when it was to boot)."""
        start = spec_group.start if spec_group is not None else defaults.START
        if start == "boot":
            return None, ""
        if spec_group.persistent:
            return None, "a persistent group's instances boot (a clone's disk is its template's)"
        key = template_key(session.key, flavor.vcpus, flavor.memory_mib)
        failed = self.template_failures.get(key)
        # a failed template is not tried again at once: each try of an image
        # without the warm-clone contract waits its whole timeout. auto gives
        # up on it for this agent's life; clone tries again after a while
        if failed and (start == "auto" or time.monotonic() - failed[0] < TEMPLATE_RETRY):
            return None, failed[1]
        with self.templates.lock(key):
            try:
                # a template guest is at its marker well before an instance is
                # ready: it has the group's ready_timeout at the most
                t = self.templates.make(key, session.key, session.url, image.format, flavor.vcpus,
                                        flavor.memory_mib, timeout=min(spec_group.ready_timeout, 600),
                                        image=image.name, sha256=image.sha256)
            except TemplateError as exc:
                self.metrics.failure("template")
                why = f"no warm-clone template of {image.name} on {self.name}: {exc}"[:500]
                self.template_failures[key] = (time.monotonic(), why)
                self.log.warning("%s", why)
                return None, why
        self.template_failures.pop(key, None)
        return t, ""

    def _create_clone_overlay(self, group: str, iid: str, template: Template) -> Path | None:
        """The clone's overlay on the template's frozen layer (None: the
        template went meanwhile, or the overlay failed: the start boots)."""
        with self.templates.using(template.key) as t:
            if t is None:
                return None
            try:
                return self.overlays.create(group, iid, str(t.disk), "qcow2")
            except Exception as exc:
                self.log.warning("clone overlay of %s on template %s failed: %s", iid, t.key, exc)
                return None

    def _restore_clone(self, group: str, iid: str, flavor: Flavor, overlay: Path, seed: Path | None, mac: str,
                       template: Template, image: Image, session: Session) -> tuple[Path, str]:
        """Restore the instance from its template; if that fails, a new
        overlay on the master to boot from and why (the template is dropped
        when its save image does not read back)."""
        spec = self._domain_spec(group, iid, flavor, overlay, seed, mac)
        try:
            with self.restores:
                self.hyper.restore_clone(template.save, spec,
                                         attach=self.instnet.net.attach if spec.tap else None)
            return overlay, ""
        except Exception as exc:
            self.metrics.failure("clone-restore")
            why = f"restoring from template {template.key} failed: {exc}"[:500]
            self.log.warning("%s: %s", iid, why)
        self._check_template(template)
        return self._boot_instead(group, iid, image, session), why

    def _check_template(self, template: Template) -> None:
        """Drop a template whose save image does not read back: never restored again."""
        try:
            self.templates.check(template)
        except SaveImageError:
            self.templates.remove(template.key)

    def _boot_instead(self, group: str, iid: str, image: Image, session: Session) -> Path:
        """A failed clone's overlay replaced by one on the master, to boot."""
        self.overlays.remove(group, iid)
        with self.sessions.lock(session_key(image.name, image.sha256)):
            return self._create_overlay(group, iid, image, session)

    def _claim_spare(self, group: str, iid: str, flavor: Flavor, overlay: Path, seed: Path | None, mac: str,
                     spare: Spare, image: Image, session: Session) -> tuple[Path, str]:
        """Run the instance as a warm spare of its template (restored ahead:
        only its identity, NIC and seed are new); if that fails, a new
        overlay on the master to boot from and why."""
        spec = self._domain_spec(group, iid, flavor, overlay, seed, mac)
        # the spare's domain, and its NIC if it has one (its tap too)
        spec = dataclasses.replace(spec, name=spare.name, tap=spare.tap if spare.mac else spec.tap)
        try:
            self.spares.claim(spare, spec, group, attach=self.instnet.net.attach if spec.tap else None)
            self.log.info("%s is warm spare %s of template %s", iid, spare.id, spare.key)
            self.wake.set()                 # the pool is one short: made again once the node is idle
            return overlay, ""
        except Exception as exc:
            self.metrics.failure("spare-claim")
            why = f"claiming warm spare {spare.id} of template {spare.key} failed: {exc}"[:500]
            self.log.warning("%s: %s", iid, why)
        return self._boot_instead(group, iid, image, session), why

    def _keep_spares(self, desired: dict, domains: dict, current) -> None:
        """Warm spares: ``spares.per_template`` of each template that is
        current and not idle, in the capacity no running instance holds
        (an instance still to start may claim one: it is not counted, or a
        group's assignments would drop the spares it is about to claim),
        dropped beyond that; one made at a time while the node has nothing
        to start or wait for (a spare's restore competes with them for CPU)."""
        have = self.spares.count()
        if self.spares.per_template <= 0 and not have:
            return
        templates = self.templates.list()
        idle_since = time.time() - self.templates.idle_s
        free_v, free_m = self._vcpus, self._memory
        # an instance still to start counts unless a spare of its flavor may
        # be the one it claims (then the spare's share is the instance's)
        claimable = Counter()
        for key, n in have.items():
            if key in templates:
                claimable[(templates[key].vcpus, templates[key].memory_mib)] += n
        for iid, (_group, _child, a) in desired.items():
            if not a.runs:
                continue
            if iid not in domains and claimable[(a.vcpus, a.memory_mib)] > 0:
                claimable[(a.vcpus, a.memory_mib)] -= 1
                continue
            free_v -= a.vcpus
            free_m -= a.memory_mib
        keep = {}
        for key, t in sorted(templates.items()):
            n = 0
            if current(t) and t.folder.stat().st_mtime >= idle_since:
                while n < self.spares.per_template and free_v >= t.vcpus and free_m >= t.memory_mib:
                    n, free_v, free_m = n + 1, free_v - t.vcpus, free_m - t.memory_mib
            keep[key] = n
        for s in self.spares.trim(keep):
            self.log.info("dropped warm spare %s of template %s", s.id, s.key)
        have = self.spares.count()
        retry = time.monotonic() - TEMPLATE_RETRY
        short = [k for k, n in keep.items() if have.get(k, 0) < n and self.spare_failures.get(k, retry) <= retry]
        if short and self._idle():
            self._submit(SPARE, self._make_spare, short[0])

    def _idle(self) -> bool:
        """Nothing to start, terminate or wait for on this node."""
        with self.inflight_lock:
            if any(fn in ("_start", "_terminate") for fn in self.inflight.values()):
                return False
        with self.awaiting_lock:
            return not self.awaiting

    def _make_spare(self, key: str) -> None:
        if self.instnet is not None and not self.instnet.ready:
            return                          # its NIC goes on the node's bridge
        network, bridge = self._nic()
        with self.templates.using(key, touch=False) as t:      # a spare is no use: the LRU is the clones'
            if t is None:
                return
            try:
                with self.restores:
                    spare = self.spares.make(t, self.hyper.virt_type, network, bridge,
                                             self.instnet.net.attach if network == "tap" else None,
                                             seed=self.make_seeds)
            except Exception as exc:
                self.metrics.failure("spare")
                self.spare_failures[key] = time.monotonic()
                self.log.warning("making a warm spare of template %s failed: %s", key, exc)
                self._check_template(t)
                return
        self.spare_failures.pop(key, None)
        self.log.info("warm spare %s of template %s made", spare.id, key)
        self.wake.set()                     # the next, if the pool is short

    def _prune_templates(self, current) -> None:
        """Templates no clone uses go when they are stale (their image is
        gone or holds other content now, or a newer session of it serves new
        instances after a storage failover) or over the disk cap. (Whether
        the image's session runs is no sign: a template keeps it running.)"""
        def in_use() -> set[str]:
            spares = self.spares.template_keys()     # first: a claim moves a spare's overlay to the instances'
            return spares | {self.templates.of_overlay_backing(self.overlays.backing(path))
                             for _g, path in self.overlays.list().values()}
        for key in self.templates.prune(in_use, current):
            self.log.info("removed warm-clone template %s", key)

    def _template_current(self):
        """t -> whether template t is of its image's content now and of the
        session new instances get (images read once per call of this)."""
        images: dict[str, str | None] = {}

        def current(t: Template) -> bool:
            if t.image not in images:
                got = read(self.zk, layout.image(t.image), Image) if t.image else None
                images[t.image] = got[0].sha256 if got else None
            if images[t.image] != t.sha256:
                return False
            s = self.sessions.current(base_of(t.session))
            return s is None or s.key == t.session
        return current

    def _address(self, inst: Instance) -> tuple[str | None, str] | None:
        """(address, MAC) for the instance; None when it must wait (shown)."""
        mac = netdef.mac_for(inst.id)
        if self.instnet is None:
            return None, mac
        net = self.instnet
        if not net.ready or not net.loaded:
            self._set_state(inst.group, inst.id, InstanceState.PENDING,
                            f"waiting for {self.name}'s instance network: {net.error or 'starting'}",
                            Reason.NETWORK_NOT_READY)
            return None
        try:
            return net.allocate(inst), mac
        except AddressesExhausted as exc:
            self._set_state(inst.group, inst.id, InstanceState.PENDING, f"{self.name}: {exc}",
                            Reason.ADDRESSES_EXHAUSTED)
            return None

    def _seed_data(self, inst: Instance, group: Group | None, address: str | None, mac: str) -> SeedData:
        net = self.instnet
        return SeedData(instance_id=inst.id, hostname=netdef.instance_hostname(inst.id), mac=mac,
                        address=f"{address}/{net.prefixlen()}" if address and net else None,
                        gateway=net.gateway() if address and net else None,
                        user_data=group.user_data if group else None,
                        ssh_authorized_keys=tuple(group.ssh_authorized_keys) if group else (),
                        random_seed=base64.b64encode(secrets.token_bytes(32)).decode())

    def _await(self, iid: str, group: str, deadline: float, replace: bool = True) -> None:
        """The readiness loop watches the instance until ``deadline``
        (``replace`` False: unless it watches it already), woken if it slept."""
        with self.awaiting_lock:
            if replace or iid not in self.awaiting:
                self.awaiting[iid] = (group, deadline)
        self.awaited.set()

    def _adopt(self, group: str, iid: str, dom) -> None:
        """A running domain with an assignment: make sure someone watches it."""
        got = read(self.zk, layout.group_instance(group, iid), Instance)
        self._remember(iid, got)
        if got is None:
            return
        inst = got[0]
        if dom.paused and dom.io_error:
            self._io_paused(dom)         # resumed by the failover, once its session reads
        elif dom.paused and dom.clone:
            # restored from a template by a start that was interrupted: its NIC
            # and seed may not be plugged, so it would wait at its template
            # marker for ever; destroyed, the next round starts it anew (if it
            # is still paused now: the listing may be older than its resume)
            now_dom = self.hyper.list(self.name).get(iid)
            if now_dom is None or not now_dom.paused:
                self.wake.set()
                return
            self.log.info("destroying %s (a clone left paused by an interrupted start)", iid)
            self.hyper.destroy(dom.name)
            self.wake.set()
            return
        elif dom.paused:
            self.log.info("resuming %s (left paused by an interrupted start)", iid)
            self.hyper.resume(dom.name, attach=self.instnet.net.attach if self.instnet is not None else None)
        if inst.state in (InstanceState.PENDING, InstanceState.STARTING):
            self._set_state(group, iid, InstanceState.RUNNING, running_at=inst.running_at or now())
            inst.state = InstanceState.RUNNING
        with self.awaiting_lock:
            watched = iid in self.awaiting
        if inst.state == InstanceState.RUNNING and not watched:
            # the deadline counts from the record's running_at: an agent restart does not reset it
            g = read(self.zk, layout.group(group), Group)
            deadline = (inst.running_at or now()) + _ready_timeout(g[0] if g else None)
            self._await(iid, group, deadline, replace=False)
        if not dom.paused:
            self.settled.add(iid)

    # -- storage failover (issue 16) --------------------------------------------
    # A running instance's overlay reads the master through the host's
    # session of the image (qemu-storage-daemon: iSCSI from one storage node,
    # NBD to the guests). When that node dies (or the daemon), the session is
    # re-made under the same key and socket from another verified replica;
    # the guests' qemu reconnect to the socket, and the reads that failed
    # meanwhile paused their guest (the disk's error policy, domain.py)
    # instead of reaching it: the failover resumes them. Found by two paths:
    # the node's replica record goes (a watch wakes the agent; then every
    # round checks), or a guest pauses on an I/O error (libvirt's event wakes
    # the agent and the paused domain's adopt asks for the failover).

    def _on_io_error(self, domain: str) -> None:
        self.log.info("%s: I/O error on its disk (paused by its error policy)", domain)
        self.wake.set()

    def _on_stopped(self, domain: str) -> None:
        """One of this node's domains stopped. Whether the agent destroyed it
        or its qemu died (killed, crashed), the next reconcile knows which:
        woken now, an instance whose guest died is started again at once
        rather than shown ready for up to a reconcile period (5 s) with no
        VM (the fault campaign saw it: a guest's qemu killed -9)."""
        if domain.startswith(f"cf-{self.name}"):      # its instances', claimed spares' (spares.py)
            self.wake.set()

    def _on_replica_gone(self, _event) -> None:
        self.wake.set()

    def _check_sessions(self, used: set) -> None:
        """A failover for each used session whose daemon is gone or whose
        storage node has no replica record (checked again in the failover:
        a record may be missing for a round while its node serves)."""
        for key in used:
            if key is None:
                continue
            live = self.sessions.get(key)
            if live is None or not self._replica_recorded(live, watch=self._on_replica_gone):
                self._submit(FAILOVER + key, self._failover, key)

    def _replica_recorded(self, session: Session, watch=None) -> bool:
        """Whether the session's storage node has a replica record of its image."""
        return not session.node or self.zk.exists(layout.image_replica(session.image, session.node),
                                                  watch=watch) is not None

    def _session_of(self, group: str, iid: str) -> str | None:
        """The session an instance's disk reads through: its overlay's
        backing, or for a warm clone its template layer's (master ->
        template layer -> overlay)."""
        overlay = self.overlays.path(group, iid)
        key = self.sessions.key_of_overlay(overlay)
        if key is None:
            layer = qcow2_backing(overlay)
            if layer and not layer.startswith("nbd+unix://"):
                key = self.sessions.key_of_overlay(layer)
        return key

    def _io_paused(self, dom) -> None:
        key = self._session_of(dom.group, dom.instance_id)
        if key is None:
            self._resume_io_paused({dom.instance_id: dom})
        else:
            self._submit(FAILOVER + key, self._failover, key)

    def _failover(self, key: str) -> None:
        """Re-make session ``key`` from another replica if its storage node
        serves the image no more or its daemon died (``SessionManager.heal``),
        then resume the guests its failed reads paused. With no replica to
        read from, the guests wait (paused, or their reads held) and the next
        round tries again."""
        with self.sessions.lock(base_of(key)):
            healing = self.sessions.heal(key, self.replicas)
        if healing.outcome == "unused":
            return                           # the reconcile stops it
        was = healing.was
        if healing.outcome == "no-replica":
            self.log.warning("session %s: %s serves '%s' no more and no other replica is "
                             "found; its guests wait", key, was.node, was.image)
            return
        if healing.outcome == "failed":
            self.metrics.failure("session-attach")
            self.log.warning("session %s: re-pointing failed (%s); its guests wait", key, healing.error)
            return
        if healing.outcome == "repointed":
            self.log.info("session %s re-pointed from %s to %s in %.0f ms", key, was.node or "?",
                          healing.session.node, healing.ms)
        self._resume_io_paused({iid: dom for iid, dom in self.hyper.list(self.name).items()
                                if dom.io_error and self._session_of(dom.group, iid) == key})

    def _resume_io_paused(self, domains: dict) -> None:
        """Resume guests paused on an I/O error (qemu retries their failed
        requests). A guest usually pauses twice per failover (its NBD client
        fails the first request after the reconnect too: measured 2 resumes
        each, 40-190 ms apart). One whose disk fails again at once (e.g. its
        overlay's file system is full) is resumed at most every 2 s after 5
        tries in 10 s, so that it cannot spin the agent; a timer wakes the
        agent when its wait ends."""
        t = time.monotonic()
        for iid, dom in domains.items():
            recent = [r for r in self._io_resumes.get(iid, ()) if t - r < 10]
            if len(recent) >= 5 and t - recent[-1] < 2:
                wake = threading.Timer(2 - (t - recent[-1]), self.wake.set)
                wake.daemon = True
                wake.start()
                continue
            self._io_resumes[iid] = recent + [t]
            try:
                self.hyper.resume(dom.name)
                self.log.info("%s resumed after an I/O error pause", iid)
            except Exception as exc:         # resumed meanwhile by another round, or gone
                self.log.debug("resuming %s: %s", iid, exc)
        for iid in [i for i, rs in self._io_resumes.items() if t - rs[-1] > 60]:
            del self._io_resumes[iid]

    def _terminate(self, group: str, iid: str) -> None:
        self.settled.discard(iid)
        self.hyper.destroy(self.hyper.name_of(self.name, iid))
        fault_point("terminate.destroyed", self.name)
        key = self.sessions.key_of_overlay(self.overlays.path(group, iid))
        self.overlays.remove(group, iid)       # ephemeral: nothing of the instance survives
        self.seeds.remove(group, iid)
        if key is not None:
            self._release_session(key)
        (self.consoles / f"{iid}.log").unlink(missing_ok=True)
        fault_point("terminate.files", self.name)
        with self.awaiting_lock:
            self.awaiting.pop(iid, None)
        self.metrics.gone(iid)
        self._remember(iid, None)
        tx = self.zk.transaction()
        got = read(self.zk, layout.group_instance(group, iid), Instance)
        if got is not None and got[0].node == self.name:
            tx.delete(layout.group_instance(group, iid), version=got[1])
        if self.zk.exists(layout.assignment(self.name, group, iid)):
            tx.delete(layout.assignment(self.name, group, iid))
        if tx.operations:
            tx.commit()
        if self.instnet is not None:
            self.instnet.release(iid)          # only once the record naming it is gone
        finish_delete_if_empty(self.zk, group)

    def _release_session(self, key: str) -> None:
        """Stop the image session when no overlay on this host uses it any more."""
        with self.sessions.lock(base_of(key)):
            if key not in self._session_users(key):
                self.log.info("last instance of session %s gone: stopping it", key)
                fault_point("session.stop", self.name)
                self.sessions.stop(key)

    # -- readiness ------------------------------------------------------------
    def _readiness_loop(self) -> None:
        """Wait for each guest's readiness line on its serial console."""
        while not self.stopping.is_set():
            self.awaited.clear()             # before the copy: an instance added after it sets it again
            with self.awaiting_lock:
                watching = dict(self.awaiting)
            if not watching:
                # nothing to wait for: sleep until something is (polling an
                # empty dict 4 times a second cost a fleet of 1,000 fake
                # agents 4,000 thread wake-ups a second)
                self.awaited.wait(RECONCILE_SECONDS)
                continue
            try:
                self._readiness_round(watching)
            except Exception:
                # e.g. ConnectionLoss while a ZooKeeper member dies: the
                # instance stays awaited and is written next round (this
                # thread ended here before, and no instance of the node
                # became ready again: found by bench/chaos.py)
                self.log.exception("readiness round failed; retrying")
            self.stopping.wait(READY_POLL)

    def _readiness_round(self, watching: dict) -> None:
        for iid, (group, deadline) in watching.items():
            log = self.consoles / f"{iid}.log"
            try:
                text = log.read_text(errors="replace")
            except OSError:
                text = ""
            if READY_MARKER in text:
                self._set_state(group, iid, InstanceState.READY, ready_at=now())
                self.metrics.ready(iid)
                with self.awaiting_lock:
                    self.awaiting.pop(iid, None)
                self.log.info("instance %s ready", iid)
                continue
            panic = guest_panic(text)
            if panic is not None:
                why = (f"the guest's kernel panicked at {PANICS_TO_FAIL} boots before it was ready ({panic}); "
                       "domain stopped, console kept", Reason.GUEST_PANIC, "guest-panic")
            elif time.time() > deadline:
                why = (f"no readiness line from the guest within its ready_timeout of "
                       f"{self._ready_timeout_of(group)} s; domain stopped, console kept",
                       Reason.READY_TIMEOUT, "not-ready")
            else:
                continue
            message, reason, label = why
            if self._not_ready(group, iid, message, reason):
                self.metrics.failure(label)
            self.metrics.gone(iid)
            with self.awaiting_lock:
                self.awaiting.pop(iid, None)

    def _ready_timeout_of(self, group: str) -> int:
        g = read(self.zk, layout.group(group), Group)
        return _ready_timeout(g[0] if g else None)

    def _not_ready(self, group: str, iid: str, message: str, reason: str) -> bool:
        """The guest will not become ready (no readiness line within the
        group's ready_timeout, or its kernel panicked): the instance is
        failed with the reason, and its domain stopped (a guest spinning in
        early boot costs a TCG host a core; its console stays readable until
        the instance is deleted). Failed stays failed: ``_start`` and
        ``_adopt`` leave it be, and scale-in and rolling updates remove
        failed instances first. False when the instance was no longer
        running (deleted, or failed another way): nothing to count."""
        got = read(self.zk, layout.group_instance(group, iid), Instance)
        if got is None or got[0].state != InstanceState.RUNNING:
            return False
        self._set_state(group, iid, InstanceState.FAILED, message, reason)
        self.hyper.destroy(self.hyper.name_of(self.name, iid))
        self.log.warning("instance %s failed: %s", iid, message)
        return True

    def request_stop(self) -> None:
        super().request_stop()
        self.awaited.set()                   # the readiness loop sleeps on it when nothing is awaited

    def shutdown(self) -> None:
        self.instance_events.flush()
        try:
            self.cache.close()
        except Exception:
            pass
        if hasattr(self, "peers"):
            self.peers.release(self._on_nodes)
        self.pool.shutdown(wait=False, cancel_futures=True)
        super().shutdown()


# A panicking Linux prints this line, then (panic=-1, the images' setting)
# reboots at once in the same domain, on the same console. A guest that
# panics at every boot (the cause is the host, e.g. a starved TCG vCPU
# failing the kernel's timer check) used to wait out its whole
# ready_timeout (900 s by default), and a Terraform apply its 10 min create
# timeout. One panic may be a fluke the reboot gets past: a second one before
# the readiness line is a boot loop.
PANIC_LINE = re.compile(r"Kernel panic - not syncing: ?([^\r\n]{0,160})")
PANICS_TO_FAIL = 2


def guest_panic(console: str) -> str | None:
    """What the guest's kernel panicked on, if its console shows it
    panicking at ``PANICS_TO_FAIL`` boots (the last one's reason)."""
    found = PANIC_LINE.findall(console)
    if len(found) < PANICS_TO_FAIL:
        return None
    return found[-1].strip() or "no reason given"


def _ready_timeout(group: Group | None) -> int:
    return group.ready_timeout if group is not None else defaults.READY_TIMEOUT


def _host_memory_mib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 2048
