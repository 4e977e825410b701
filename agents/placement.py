"""Turning a group's desired state into assignments (the coordinator's job).

A compute rack leader coordinates a request under the group's kazoo Lock:
it computes the instances to add or remove, gathers offers for the ones to
add through the hand-shake (handshake.py), splits them by the placement
policy, and commits everything -- instances, assignments, the group's
status, the request's removal and a version bump of every node folder it
counted on -- in ONE ZooKeeper transaction (the commit point). A coordinator
that dies before the commit leaves the request queued for another leader;
after it, the request is gone: exactly once.
"""
from __future__ import annotations

import heapq
import json
import logging
import secrets
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

from kazoo.exceptions import LockTimeout, NoNodeError, NodeExistsError, NotEmptyError

from cowfleet.agents.handshake import Gatherer, LocalGatherer, split
from cowfleet import defaults
from cowfleet.faults import fault_point
from cowfleet.models import (DEFAULT_FLAVORS, DeployRequest, Event, EventReason, EventType, Flavor, Group,
                             GroupStatus, Instance, InstanceState, Reason, now)
from cowfleet.protocol import DESIRED_RUN, DESIRED_TERMINATE, Trace, assignment_data
from cowfleet.zk import events, layout
from cowfleet.zk.connection import read, read_children
from cowfleet.zk.groups import finish_delete_if_empty
from cowfleet.zk.leaders import rack_leaders

log = logging.getLogger(__name__)

def flavor_named(zk, name: str) -> Flavor | None:
    got = read(zk, layout.flavor(name), Flavor)
    if got:
        return got[0]
    return next((f for f in DEFAULT_FLAVORS if f.name == name), None)


def _victims(live: list[Instance], excess: int, strategy: str = defaults.STRATEGY) -> list[Instance]:
    """Which instances go on scale-in: failed first, then the least far
    along; among equals, for ``spread`` one from the rack (then the node)
    holding the most of the group's instances at that moment, so racks stay
    balanced; for ``pack`` the emptiest nodes first, so the rest stay packed;
    then the newest."""
    rank = {InstanceState.FAILED: 0, InstanceState.PENDING: 1, InstanceState.STARTING: 2,
            InstanceState.RUNNING: 3, InstanceState.READY: 4}
    per_rack = Counter(i.rack for i in live)
    per_node = Counter(i.node for i in live)
    if strategy == "pack":
        return sorted(live, key=lambda i: (rank.get(i.state, 0), per_node[i.node], per_rack[i.rack],
                                           -i.created_at))[:excess]

    out: list[Instance] = []
    for tier in sorted({rank.get(i.state, 0) for i in live}):
        if len(out) >= excess:
            break
        # this tier's candidates by rack and node, oldest first (the newest is popped)
        by_rack: dict[str, dict[str, list[Instance]]] = {}
        for i in sorted((i for i in live if rank.get(i.state, 0) == tier), key=lambda i: (i.created_at, i.id)):
            by_rack.setdefault(i.rack, {}).setdefault(i.node, []).append(i)
        # the rack with the most of the group's instances, then its fullest node:
        # heaps of (-count, name); a count only drops, so a stale entry is skipped
        racks = [(-per_rack[r], r) for r in by_rack]
        heapq.heapify(racks)
        nodes = {r: [(-per_node[n], n) for n in ns] for r, ns in by_rack.items()}
        for h in nodes.values():
            heapq.heapify(h)
        while racks and len(out) < excess:
            count, rack = heapq.heappop(racks)
            if -count != per_rack[rack] or not nodes[rack]:
                continue
            while True:
                ncount, node = heapq.heappop(nodes[rack])
                if -ncount == per_node[node] and by_rack[rack].get(node):
                    break
            inst = by_rack[rack][node].pop()
            out.append(inst)
            per_rack[rack] -= 1
            per_node[node] -= 1
            if by_rack[rack][node]:
                heapq.heappush(nodes[rack], (-per_node[node], node))
            if nodes[rack]:
                heapq.heappush(racks, (-per_rack[rack], rack))
    return out


@dataclass
class PlacementResult:
    created: list[Instance] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    unplaced: int = 0
    trace: Trace | None = None


def reconcile_group(zk, name: str, request_path: str | None = None, gatherer: Gatherer | None = None,
                    coordinator: str = "", via: str = "") -> PlacementResult | None:
    """Bring one group's assignments to its desired state in one transaction.

    Retries from scratch (new offers) when anything it read changed before
    the commit -- the group, or a node another coordinator placed on.
    """
    gatherer = gatherer or LocalGatherer()
    request = request_path.rsplit("/", 1)[-1] if request_path else f"sweep-{secrets.token_hex(4)}"
    trace = Trace(request=request, group=name, coordinator=coordinator, want=0,
                  via=via or ("queue" if request_path else "sweep"))
    t0 = time.monotonic()
    try:
        for attempt in range(1, 21):
            trace.attempts = attempt
            result = _try_reconcile(zk, name, request_path, gatherer, trace)
            if result is not None:
                trace.total_ms = round((time.monotonic() - t0) * 1000, 1)
                result.trace = trace
                if trace.want:
                    _record_trace(zk, trace)
                return result
        log.warning("group %s: gave up after repeated concurrent changes", name)
        return None
    finally:
        if trace.want:
            gatherer.release(zk, request)


def _record_trace(zk, trace: Trace) -> None:
    """The last placement of a group, for GET .../placement and the log."""
    log.info("placement %s of group %s by %s: want %d, split %s, per rack %s, unplaced %d, "
             "offers %.0f ms, commit %.0f ms, total %.0f ms, attempts %d", trace.request, trace.group,
             trace.coordinator, trace.want, trace.split, trace.per_rack, trace.unplaced,
             trace.offers_ms, trace.commit_ms, trace.total_ms, trace.attempts)
    data = json.dumps(trace.to_dict(), sort_keys=True).encode()
    if len(data) > 256 * 1024:      # 200 racks of offers still fit; never a huge znode
        slim = dict(trace.to_dict(), racks={r: {k: v for k, v in e.items() if k != "offers"}
                                            for r, e in trace.racks.items()})
        data = json.dumps(slim, sort_keys=True).encode()
    path = layout.group_placement(trace.group)
    try:
        zk.set(path, data)
    except NoNodeError:
        try:
            if zk.exists(layout.group(trace.group)):
                zk.create(path, data)
        except (NodeExistsError, NoNodeError):
            pass


def _try_reconcile(zk, name: str, request_path: str | None, gatherer: Gatherer,
                   trace: Trace) -> PlacementResult | None:
    got = read(zk, layout.group(name), Group)
    if got is None:
        if request_path:
            try:
                zk.delete(request_path)
            except NoNodeError:
                pass
        return PlacementResult()
    group, gversion = got
    old = read(zk, layout.group_status(name), GroupStatus)
    if request_path is None and not group.deleting and old is not None \
            and old[0].observed_generation < group.generation:
        return PlacementResult()     # a request for this generation is queued: it decides
    instances = read_children(zk, layout.group_instances(name), Instance)
    # names only: an instance's node is gone when its membership znode is
    members = set(zk.get_children(layout.NODES))
    flavor = flavor_named(zk, group.flavor)
    result = PlacementResult()
    tx = zk.transaction()
    tx.check(layout.group(name), gversion)

    def terminate(inst: Instance, version: int) -> None:
        inst.state = InstanceState.TERMINATING
        tx.set_data(layout.group_instance(name, inst.id), inst.to_bytes(), version=version)
        result.terminated.append(inst.id)
        if zk.exists(layout.assignment(inst.node, name, inst.id)):
            tx.set_data(layout.assignment(inst.node, name, inst.id),
                        assignment_data(DESIRED_TERMINATE, flavor or DEFAULT_FLAVORS[0]))

    live = []
    dropped = 0
    moved: dict[str, int] = {}      # node that left -> its instances, re-placed now
    for inst, version in instances:
        if inst.state == InstanceState.TERMINATING:
            if inst.node not in members:
                # its agent is gone: nobody else will remove it; a returning
                # agent destroys the domain it no longer has an assignment for
                _drop(zk, tx, name, inst, version)
                dropped += 1
            continue
        if inst.node not in members:
            _drop(zk, tx, name, inst, version)    # re-placed below
            dropped += 1
            moved.setdefault(inst.node, 0)
            moved[inst.node] += 1
            continue
        live.append((inst, version))

    message = reason = ""
    said: list[Event] = []          # what this decision did, recorded once it is committed

    def say(reason: str, message: str, warning: bool = False, instance: str | None = None,
            node: str | None = None) -> None:
        said.append(Event(reason=reason, message=message, instance=instance, node=node,
                          type=EventType.WARNING if warning else EventType.NORMAL,
                          generation=group.generation, source=trace.coordinator or "leader"))

    if group.deleting:
        for inst, version in live:
            terminate(inst, version)
        if live:
            say(EventReason.TERMINATING, f"removing {len(live)} instance(s): {_ids(i for i, _ in live)}")
    elif flavor is None:
        message = f"flavor '{group.flavor}' does not exist"
        reason = Reason.FLAVOR_NOT_FOUND
    else:
        current = [(i, v) for i, v in live if group.is_current(i)]
        outdated = [(i, v) for i, v in live if not group.is_current(i)]
        if outdated:
            retire, add = _rolling_step(group, current, outdated)
            for inst, version in retire:
                terminate(inst, version)
            if retire:
                say(EventReason.REPLACED, f"rolling update to image '{group.image}', flavor '{group.flavor}': "
                    f"retiring {len(retire)} outdated instance(s): {_ids(i for i, _ in retire)}",
                    instance=retire[0][0].id if len(retire) == 1 else None)
            live = [(i, v) for i, v in live if i.id not in {r.id for r, _ in retire}]
            message = (f"rolling update to image '{group.image}', flavor '{group.flavor}': "
                       f"{len(outdated) - len(retire)} outdated instance(s) left")
            # add only what the surge allows; the normal path below adds no more
            excess = -add if add else 0
            if len(current) > group.size:
                excess = len(current) - group.size
                live = current
        else:
            excess = len(live) - group.size
        if excess > 0:
            versions = {i.id: v for i, v in live}
            victims = _victims([i for i, _ in live], excess, group.placement.get("strategy", defaults.STRATEGY))
            for inst in victims:
                terminate(inst, versions[inst.id])
            say(EventReason.SCALED_IN, f"removing {len(victims)} instance(s) beyond size {group.size}: "
                f"{_ids(victims)}", instance=victims[0].id if len(victims) == 1 else None)
        elif excess < 0:
            missing = -excess
            trace.want = missing
            t_offers = time.monotonic()
            offers = gatherer.offers(zk, trace.request, name, flavor, missing, trace)
            trace.offers_ms = round((time.monotonic() - t_offers) * 1000, 1)
            take = split(offers, missing, group.placement.get("strategy", defaults.STRATEGY),
                         group.placement.get("max_per_node"))
            by_node = {o.node: o for o in offers}
            taken = {i.id for i, _ in instances}
            trace.split, trace.per_rack = dict(sorted(take.items())), {}
            for node_name, k in sorted(take.items()):
                offer = by_node[node_name]
                # the commit point's guard: fails if anyone placed on this node
                # since the offer was made
                tx.set_data(layout.assignments(node_name), b"", version=offer.version)
                trace.per_rack[offer.rack] = trace.per_rack.get(offer.rack, 0) + k
                for _ in range(k):
                    iid = _new_id(name, taken)
                    inst = Instance(id=iid, group=name, node=node_name, rack=offer.rack, image=group.image,
                                    flavor=group.flavor, generation=group.generation)
                    tx.create(layout.group_instance(name, iid), inst.to_bytes())
                    tx.create(layout.assignment(node_name, name, iid), assignment_data(DESIRED_RUN, flavor))
                    result.created.append(inst)
            if result.created:
                where = ", ".join(f"{n} {k}" for n, k in sorted(take.items()) if k)
                say(EventReason.PLACED, f"placed {len(result.created)} instance(s) on {where}: "
                    f"{_ids(result.created)}", instance=result.created[0].id if len(result.created) == 1 else None,
                    node=next(iter(n for n, k in take.items() if k)) if len(take) == 1 else None)
            result.unplaced = trace.unplaced = missing - sum(take.values())
            if result.unplaced:
                limit = group.placement.get("max_per_node")
                room = sum(o.count for o in offers)
                reason = unplaced_reason(len(offers), room, missing, limit)
                why = (f"{result.unplaced} instance(s) not placed: {len(offers)} compute node(s) in "
                       f"{len({o.rack for o in offers})} rack(s) offered room for {room} of flavor "
                       f"'{flavor.name}' ({flavor.vcpus} vCPU, {flavor.memory_mib} MiB)"
                       + (f" within max_per_node={limit}" if limit else "")
                       + "; placed when capacity appears")
                message = f"{message}; {why}" if message else why
    if moved and not message:
        message = "moving " + ", ".join(f"{n} instance(s) off {node} (left the cluster)"
                                        for node, n in sorted(moved.items()))
    if moved and not reason:
        reason = Reason.NODE_LEFT
    # the reason's start is kept while the same reason holds (the Placed condition's since)
    since = (old[0].since if old is not None and old[0].reason == reason and old[0].since else now()) \
        if reason else None
    status = GroupStatus(observed_generation=group.generation, unplaced=result.unplaced, message=message,
                         reason=reason, since=since)
    if moved:
        say(EventReason.MOVED, message if message.startswith("moving") else
            "moving " + ", ".join(f"{n} instance(s) off {node} (left the cluster)" for node, n in sorted(moved.items())),
            warning=True)
    if result.unplaced and (old is None or old[0].unplaced != result.unplaced or old[0].reason != reason):
        say(EventReason.UNPLACED, f"{reason}: {message}", warning=True)
    if (not request_path and not result.created and not result.terminated and not dropped
            and old is not None and old[0] == status):
        if group.deleting and not live:
            finish_delete_if_empty(zk, name)     # an earlier try lost a race (e.g. with an event)
        return result                 # nothing to change: write nothing
    tx.set_data(layout.group_status(name), status.to_bytes())
    if request_path:
        tx.delete(request_path)
    fault_point("before-commit", trace.coordinator)
    t_commit = time.monotonic()
    outcome = tx.commit()
    trace.commit_ms = round((time.monotonic() - t_commit) * 1000, 1)
    failures = [r for r in outcome if isinstance(r, Exception)]
    if failures:
        real = [r for r in failures if not type(r).__name__ == "RolledBackError"]
        if real and request_path and isinstance(real[0], NoNodeError) and not zk.exists(request_path):
            return PlacementResult()          # another leader handled it meanwhile
        log.debug("group %s: transaction failed (%s); retrying", name, real)
        trace.outcome = f"retried after {type(real[0]).__name__ if real else 'a conflict'}"
        return None
    trace.outcome = "committed" + (f"; {message}" if moved else "")
    for event in said:
        events.record_safely(zk, name, event, log)
    if group.deleting:
        finish_delete_if_empty(zk, name)
    if result.created or result.terminated:
        log.info("group %s gen %d: +%d -%d unplaced %d", name, group.generation,
                 len(result.created), len(result.terminated), result.unplaced)
    return result


def _ids(instances, shown: int = 5) -> str:
    """Some instances' ids for a message: the first few, then how many more."""
    ids = [i.id for i in instances]
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def unplaced_reason(nodes: int, room: int, missing: int, max_per_node: int | None) -> str:
    """Why instances stay unplaced: no compute node offered at all; the
    nodes' room was enough but max_per_node forbade using it; or no room."""
    if nodes == 0:
        return Reason.NO_COMPUTE_NODES
    if max_per_node and room >= missing:
        return Reason.MAX_PER_NODE
    return Reason.NO_CAPACITY


def _rolling_step(group: Group, current: list, outdated: list) -> tuple[list, int]:
    """One step of a rolling replacement within ``update_policy``.

    Returns (outdated instances to retire now, new instances to add now).
    Availability (ready instances, old or new) never drops below
    ``size - max_unavailable``; live instances never exceed ``size + max_surge``.
    Later steps follow as new instances become ready (the leader re-checks
    every group periodically).
    """
    policy = group.update_policy or {}
    surge = int(policy.get("max_surge", defaults.MAX_SURGE))
    unavailable = int(policy.get("max_unavailable", defaults.MAX_UNAVAILABLE))
    if surge == 0 and unavailable == 0:
        unavailable = 1              # otherwise no step could ever be taken
    ready = sum(i.state == InstanceState.READY for i, _ in current + outdated)
    budget = ready - max(0, group.size - unavailable)
    retire = []
    # outdated instances that are not ready cost no availability: they go first
    for inst, version in sorted(outdated, key=lambda iv: iv[0].state == InstanceState.READY):
        if inst.state != InstanceState.READY:
            retire.append((inst, version))
        elif budget > 0:
            retire.append((inst, version))
            budget -= 1
    remaining = len(current) + len(outdated) - len(retire)
    room = group.size + surge - remaining
    add = max(0, min(group.size - len(current), room))
    return retire, add


def _drop(zk, tx, name: str, inst: Instance, version: int) -> None:
    tx.delete(layout.group_instance(name, inst.id), version=version)
    if zk.exists(layout.assignment(inst.node, name, inst.id)):
        tx.delete(layout.assignment(inst.node, name, inst.id))


def _new_id(group: str, taken: set[str]) -> str:
    while True:
        iid = f"{group}-{secrets.token_hex(3)}"
        if iid not in taken:
            taken.add(iid)
            return iid


class Placer:
    """The leader side. Requests arrive by hand (``handle``, the service's
    fast path over P2P) or are claimed from the queue once they have waited
    ``grace`` seconds (the service died, or its hand-off failed). Every group
    is also re-checked periodically (capacity that appears, nodes that
    vanish), each by one leader: the groups are shared out among them.
    All of it runs under the group's lock, so one coordinator at a time
    decides for a group, and requests for different groups run in parallel."""

    def __init__(self, zk, identifier: str, gatherer: Gatherer | None = None, grace: float = 3.0):
        self.zk = zk
        self.identifier = identifier
        self.gatherer = gatherer or LocalGatherer()
        self.grace = grace

    def _locked(self, group: str, fn, timeout: float = 10):
        lock = self.zk.Lock(layout.group_lock(group), identifier=self.identifier)
        try:
            if not lock.acquire(timeout=timeout):
                return None
        except LockTimeout:
            return None
        try:
            return fn()
        finally:
            lock.release()

    def handle(self, seq: str, via: str = "queue") -> PlacementResult | None:
        """Coordinate one queued request (no-op if another leader did)."""
        path = layout.request(seq)
        got = read(self.zk, path, DeployRequest)
        if got is None:
            return None

        def run():
            if not self.zk.exists(path):
                return None            # handled while we waited for the lock
            return reconcile_group(self.zk, got[0].group, path, self.gatherer, self.identifier, via)
        return self._locked(got[0].group, run)

    def process_requests(self) -> int:
        """Claim requests nobody handled within ``grace`` seconds."""
        try:
            names = sorted(self.zk.get_children(layout.REQUESTS))
        except NoNodeError:
            return 0
        done = 0
        for seq in names:
            stat = self.zk.exists(layout.request(seq))
            if stat is None or time.time() - stat.ctime / 1000 < self.grace:
                continue
            log.info("claiming request %s (not handed over within %.0fs)", seq, self.grace)
            if self.handle(seq) is not None:
                done += 1
        return done

    def my_share(self, groups: list[str]) -> list[str]:
        leaders = sorted(n.name for n in rack_leaders(self.zk, "compute").values())
        if self.identifier not in leaders:
            return groups if not leaders else []
        i, n = leaders.index(self.identifier), len(leaders)
        return [g for g in groups if zlib.crc32(g.encode()) % n == i]

    def reconcile_all(self) -> None:
        try:
            groups = sorted(self.zk.get_children(layout.GROUPS))
        except NoNodeError:
            return
        for name in self.my_share(groups):
            self._locked(name, lambda: reconcile_group(self.zk, name, None, self.gatherer, self.identifier),
                         timeout=1)
        self._forget_locks(set(groups))
        events.forget_orphans(self.zk)

    def _forget_locks(self, groups: set[str]) -> None:
        """Lock folders of groups that are gone (an unheld one is empty)."""
        try:
            names = self.zk.get_children(layout.LOCKS)
        except NoNodeError:
            return
        for child in names:
            group = layout.parse_group_lock(child)
            if group is not None and group not in groups:
                try:
                    self.zk.delete(f"{layout.LOCKS}/{child}")
                except (NoNodeError, NotEmptyError):
                    pass
