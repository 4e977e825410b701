"""Turning a group's desired state into assignments (the coordinator's job).

A compute rack leader coordinates a request under the group's kazoo Lock:
it reads the group (``read_snapshot``), decides the instances to add or
remove (``decide``), gathers offers for the ones to add through the
hand-shake (handshake.py), turns all that into writes (``plan``, pure: unit
tests run it without ZooKeeper) and commits them -- instances, assignments,
a version bump of every node folder it counted on, the group's status, the
request's removal -- in ZooKeeper transactions of bounded size
(``transactions``: a multi is one request, refused above jute.maxbuffer).
Every transaction checks the group's version and carries whole units (a
node's new instances with its folder's version guard), so none over-commits
or duplicates; the request goes with the last one. A coordinator that dies
between two leaves the request queued: the next one reads what was
committed as the group's instances and places the rest -- exactly once.
"""
from __future__ import annotations

import heapq
import json
import logging
import os
import secrets
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field, replace

from kazoo.exceptions import (LockTimeout, NoNodeError, NodeExistsError, NotEmptyError, RolledBackError,
                               RuntimeInconsistency)

from cowfleet.agents.handshake import Gatherer, LocalGatherer
from cowfleet.agents.policy import split
from cowfleet import defaults
from cowfleet.faults import fault_point
from cowfleet.models import (DEFAULT_FLAVORS, DeployRequest, Event, EventReason, EventType, Flavor, Group,
                             GroupStatus, Instance, InstanceState, Reason, now)
from cowfleet.protocol import DESIRED_RUN, DESIRED_TERMINATE, NodeOffer, Trace, assignment_data
from cowfleet.zk import events, layout
from cowfleet.zk.connection import read, read_later, read_named
from cowfleet.zk.groups import finish_delete_if_empty
from cowfleet.zk.leaders import rack_leaders

log = logging.getLogger(__name__)

def flavor_named(zk, name: str) -> Flavor | None:
    return flavor_or_default(read(zk, layout.flavor(name), Flavor), name)


def flavor_or_default(got: tuple[Flavor, int] | None, name: str) -> Flavor | None:
    """The flavor read, else the built-in one of that name (None: neither)."""
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


# -- the plan: from what was read to the writes (pure, no ZooKeeper) -----------

CHUNK_BYTES_ENV = "COWFLEET_PLACEMENT_CHUNK_BYTES"
# A ZooKeeper transaction (multi) is one request, refused above jute.maxbuffer
# (1 MiB - 1 by default; the lab's zoo.cfg keeps it). Measured here
# (bench/README.md): 2,000 instances (an instance and an assignment create
# each, ~0.91 MB on the wire) commit in one multi in 0.16 s; 2,500 (~1.14 MB)
# make the server drop the connection. A quarter of the limit -- ~570
# instances -- keeps every chunk well under it whatever the names' lengths.
CHUNK_BYTES = 256 * 1024
# How long a leader trusts its list of the other leaders (the share of the
# groups it re-checks) when the membership did not change meanwhile.
LEADERS_SECONDS = 60.0
# The trace's progress between two transactions (GET .../placement while a
# large group commits): the first at once, then at most once a second.
PROGRESS_SECONDS = 1.0
# Placement transactions in flight at once (``_Commit``): 4 of 256 KiB keep
# ZooKeeper's queue fed with one session's 1 MiB at most.
PIPELINE = 4
# A settled group is swept again at least this often even when nothing it
# depends on moved (``Placer.reconcile_all``).
FULL_SWEEP_SECONDS = 60.0
RENEWALS = 64       # removals-only transactions renewed from fresh reads, at most, in one round


def chunk_bytes() -> int:
    """The wire size a placement transaction stays under (``$COWFLEET_PLACEMENT_CHUNK_BYTES``,
    set small by tests to place a group in many chunks)."""
    try:
        return max(1, int(os.environ.get(CHUNK_BYTES_ENV, CHUNK_BYTES)))
    except ValueError:
        return CHUNK_BYTES


@dataclass(frozen=True)
class Op:
    """One operation of a ZooKeeper transaction: create, set, delete or
    check (``version`` -1: any)."""
    kind: str
    path: str
    data: bytes = b""
    version: int = -1

    def size(self) -> int:
        """Its bytes in a multi request (jute): the op header (9), the path
        and data (4 + length each), a version (4); a create carries the
        world:anyone ACL (31) and flags (4) instead of a version."""
        n = 9 + 4 + len(self.path.encode())
        if self.kind == "create":
            return n + 4 + len(self.data) + 31 + 4
        if self.kind == "set":
            return n + 4 + len(self.data) + 4
        return n + 4

    def add_to(self, tx) -> None:
        if self.kind == "create":
            tx.create(self.path, self.data)
        elif self.kind == "set":
            tx.set_data(self.path, self.data, version=self.version)
        elif self.kind == "delete":
            tx.delete(self.path, version=self.version)
        else:
            tx.check(self.path, self.version)


@dataclass
class Snapshot:
    """What a coordinator read of one group: the input of ``decide`` and ``plan``."""
    name: str
    group: Group
    version: int                                # the group znode's: every transaction checks it
    status: GroupStatus | None
    instances: list[tuple[Instance, int]]       # with their znode versions
    members: set[str]                           # names of the nodes in the cluster
    flavor: Flavor | None


@dataclass
class Decision:
    """What changes, before any offer: instances to terminate or drop, how
    many to add."""
    terminate: list[tuple[Instance, int]] = field(default_factory=list)
    drop: list[tuple[Instance, int]] = field(default_factory=list)
    want: int = 0
    message: str = ""
    reason: str = ""                                      # a Reason, when nothing can be placed at all
    rolling: bool = False
    moved: dict[str, int] = field(default_factory=dict)   # node that left -> its instances
    retired: list[Instance] = field(default_factory=list)     # outdated, by the rolling update
    scaled_in: list[Instance] = field(default_factory=list)   # beyond the group's size


@dataclass
class Plan:
    """The writes: ``units`` each all-or-nothing (an instance's termination;
    a node's new instances with the version guard of its assignment folder),
    then ``final`` (the group's status, the request's removal) in the last
    transaction."""
    units: list[list[Op]] = field(default_factory=list)
    final: list[Op] = field(default_factory=list)
    created: list[Instance] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    dropped: int = 0
    unplaced: int = 0
    split: dict[str, int] = field(default_factory=dict)
    per_rack: dict[str, int] = field(default_factory=dict)
    message: str = ""
    status: GroupStatus = field(default_factory=GroupStatus)
    observed_before: int = 0


def decide(snap: Snapshot) -> Decision:
    """Which instances go and how many come, from the snapshot alone."""
    group = snap.group
    d = Decision()
    live = []
    for inst, version in snap.instances:
        if inst.state == InstanceState.TERMINATING:
            if inst.node not in snap.members:
                # its agent is gone: nobody else will remove it; a returning
                # agent destroys the domain it no longer has an assignment for
                d.drop.append((inst, version))
            continue
        if inst.node not in snap.members:
            d.drop.append((inst, version))          # re-placed below
            d.moved[inst.node] = d.moved.get(inst.node, 0) + 1
            continue
        live.append((inst, version))

    if group.deleting:
        d.terminate = live
        return d
    if snap.flavor is None:
        d.message = f"flavor '{group.flavor}' does not exist"
        d.reason = Reason.FLAVOR_NOT_FOUND
        return d
    current = [(i, v) for i, v in live if group.is_current(i)]
    outdated = [(i, v) for i, v in live if not group.is_current(i)]
    if outdated:
        d.rolling = True
        retire, add = _rolling_step(group, current, outdated)
        d.terminate.extend(retire)
        d.retired = [i for i, _ in retire]
        live = [(i, v) for i, v in live if i.id not in {r.id for r, _ in retire}]
        d.message = (f"rolling update to image '{group.image}', flavor '{group.flavor}': "
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
        d.scaled_in = _victims([i for i, _ in live], excess, group.placement.get("strategy", defaults.STRATEGY))
        d.terminate.extend((inst, versions[inst.id]) for inst in d.scaled_in)
    elif excess < 0:
        d.want = -excess
    return d


def plan(snap: Snapshot, d: Decision, offers: list[NodeOffer], assigned: set[str],
         request_path: str | None, unit_bytes: int = CHUNK_BYTES, new_id=None) -> Plan | None:
    """The writes that carry out ``d`` with ``offers`` (``assigned``: which
    of the going instances' assignment znodes exist). None: nothing to write."""
    name, group, flavor = snap.name, snap.group, snap.flavor
    new_id = new_id or _new_id
    p = Plan(observed_before=snap.status.observed_generation if snap.status else 0)
    for inst, version in d.terminate:
        p.units.append(removal_unit(name, inst, version, False, assigned, flavor))
        p.terminated.append(inst.id)
    for inst, version in d.drop:
        p.units.append(removal_unit(name, inst, version, True, assigned, flavor))
        p.dropped += 1
    message, reason = d.message, d.reason
    if d.want:
        take = split(offers, d.want, group.placement.get("strategy", defaults.STRATEGY),
                     group.placement.get("max_per_node"))
        by_node = {o.node: o for o in offers}
        taken = {i.id for i, _ in snap.instances}
        p.split = dict(sorted(take.items()))
        run = assignment_data(DESIRED_RUN, flavor)
        for node_name, k in p.split.items():
            offer = by_node[node_name]
            # the commit point's guard: fails if anyone placed on this node
            # since the offer was made. A node's instances may span units
            # (transactions): each unit bumps the folder's version once, so
            # the next one expects the version after it
            version = offer.version
            unit: list[Op] = []
            size = 0
            for _ in range(k):
                iid = new_id(name, taken)
                inst = Instance(id=iid, group=name, node=node_name, rack=offer.rack, image=group.image,
                                flavor=group.flavor, generation=group.generation)
                ops = [Op("create", layout.group_instance(name, iid), inst.to_bytes()),
                       Op("create", layout.assignment(node_name, name, iid), run)]
                more = ops[0].size() + ops[1].size()
                if not unit or size + more > unit_bytes:
                    unit = [Op("set", layout.assignments(node_name), b"", version)]
                    size = unit[0].size()
                    version += 1
                    p.units.append(unit)
                unit.extend(ops)
                size += more
                p.created.append(inst)
            p.per_rack[offer.rack] = p.per_rack.get(offer.rack, 0) + k
        p.unplaced = d.want - sum(take.values())
        if p.unplaced:
            limit = group.placement.get("max_per_node")
            room = sum(o.count for o in offers)
            reason = unplaced_reason(len(offers), room, d.want, limit)
            why = (f"{p.unplaced} instance(s) not placed: {len(offers)} compute node(s) in "
                   f"{len({o.rack for o in offers})} rack(s) offered room for {room} of flavor "
                   f"'{flavor.name}' ({flavor.vcpus} vCPU, {flavor.memory_mib} MiB)"
                   + (f" within max_per_node={limit}" if limit else "")
                   + "; placed when capacity appears")
            message = f"{message}; {why}" if message else why
    if d.moved and not message:
        message = _moving(d.moved)
    if d.moved and not reason:
        reason = Reason.NODE_LEFT
    p.message = message
    # the reason's start is kept while the same reason holds (the Placed condition's since)
    old = snap.status
    since = (old.since if old is not None and old.reason == reason and old.since else now()) if reason else None
    p.status = GroupStatus(observed_generation=group.generation, unplaced=p.unplaced, message=message,
                           reason=reason, since=since)
    if not request_path and not p.units and snap.status == p.status:
        return None                   # nothing to change: write nothing
    p.final = [Op("set", layout.group_status(name), p.status.to_bytes())]
    if request_path:
        p.final.append(Op("delete", request_path))
    return p


def _moving(moved: dict[str, int]) -> str:
    return "moving " + ", ".join(f"{n} instance(s) off {node} (left the cluster)" for node, n in sorted(moved.items()))


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


def plan_events(snap: Snapshot, d: Decision, p: Plan, source: str) -> list[Event]:
    """What a committed plan did, as the group's events (recorded after the
    last transaction: an event never tells of a change that did not happen)."""
    group = snap.group
    out: list[Event] = []

    def say(reason: str, message: str, warning: bool = False, instance: str | None = None,
            node: str | None = None) -> None:
        out.append(Event(reason=reason, message=message, instance=instance, node=node,
                         type=EventType.WARNING if warning else EventType.NORMAL,
                         generation=group.generation, source=source or "leader"))

    if group.deleting and d.terminate:
        say(EventReason.TERMINATING, f"removing {len(d.terminate)} instance(s): {_ids(i for i, _ in d.terminate)}")
    if d.retired:
        say(EventReason.REPLACED, f"rolling update to image '{group.image}', flavor '{group.flavor}': "
            f"retiring {len(d.retired)} outdated instance(s): {_ids(d.retired)}",
            instance=d.retired[0].id if len(d.retired) == 1 else None)
    if d.scaled_in:
        say(EventReason.SCALED_IN, f"removing {len(d.scaled_in)} instance(s) beyond size {group.size}: "
            f"{_ids(d.scaled_in)}", instance=d.scaled_in[0].id if len(d.scaled_in) == 1 else None)
    if p.created:
        taken = {n: k for n, k in p.split.items() if k}
        where = ", ".join(f"{n} {k}" for n, k in sorted(taken.items()))
        say(EventReason.PLACED, f"placed {len(p.created)} instance(s) on {where}: {_ids(p.created)}",
            instance=p.created[0].id if len(p.created) == 1 else None,
            node=next(iter(taken)) if len(taken) == 1 else None)
    if d.moved:
        say(EventReason.MOVED, p.message if p.message.startswith("moving") else _moving(d.moved), warning=True)
    old = snap.status
    if p.unplaced and (old is None or old.unplaced != p.unplaced or old.reason != p.status.reason):
        say(EventReason.UNPLACED, f"{p.status.reason}: {p.message}", warning=True)
    return out


def removal_unit(name: str, inst: Instance, version: int, drop: bool, assigned: set[str],
                 flavor: Flavor | None) -> list[Op]:
    """An instance's termination (its record says terminating, its
    assignment terminate: its agent removes both when the domain is gone),
    or its drop (both removed now: its node left the cluster)."""
    path = layout.assignment(inst.node, name, inst.id)
    if drop:
        return [Op("delete", layout.group_instance(name, inst.id), version=version)] + \
            ([Op("delete", path)] if path in assigned else [])
    return [Op("set", layout.group_instance(name, inst.id),
               replace(inst, state=InstanceState.TERMINATING).to_bytes(), version)] + \
        ([Op("set", path, assignment_data(DESIRED_TERMINATE, flavor or DEFAULT_FLAVORS[0]))]
         if path in assigned else [])


def removals_of(name: str, ops: list[Op]) -> list[tuple[str, bool]] | None:
    """The instances a transaction removes, (id, drop?), or None when it also
    creates (its node guards need fresh offers: no repair, a new round)."""
    prefix = layout.group_instances(name) + "/"
    if any(o.kind == "create" for o in ops):
        return None
    return [(o.path[len(prefix):], o.kind == "delete") for o in ops
            if o.path.startswith(prefix) and o.kind in ("set", "delete")]


def renew_removals(name: str, ops: list[Op], fresh: dict[str, tuple[Instance, int] | None],
                   assigned: set[str], flavor: Flavor | None) -> list[Op]:
    """A removals-only transaction again, from fresh reads of its instances
    (``fresh``: id -> record and version, None when gone) after an agent
    changed one of them meanwhile (a state update bumps its version; a
    finished termination removes it). Gone or already terminating: left
    out. The group's check and the status writes stay as they were."""
    prefix = layout.group_instances(name) + "/"
    head = [o for o in ops if o.kind == "check"]
    tail = [o for o in ops if o.path == layout.group_status(name) or o.path.startswith(layout.REQUESTS + "/")]
    units = []
    for iid, drop in removals_of(name, ops) or []:
        got = fresh.get(iid)
        if got is None or (not drop and got[0].state == InstanceState.TERMINATING):
            continue
        units.extend(removal_unit(name, got[0], got[1], drop, assigned, flavor))
    assert all(o.path.startswith((prefix, layout.ASSIGNMENTS + "/")) for o in units)
    return head + units + tail


def halves(name: str, ops: list[Op]) -> list[list[Op]]:
    """A removals-only transaction as two, each with the group's check, the
    second with the status writes (one transaction when it removes one
    instance or none)."""
    prefix = layout.group_instances(name) + "/"
    head = [o for o in ops if o.kind == "check"]
    tail = [o for o in ops if o.path == layout.group_status(name) or o.path.startswith(layout.REQUESTS + "/")]
    units: list[list[Op]] = []
    for o in ops:
        if o.path.startswith(prefix):
            units.append([o])
        elif o.path.startswith(layout.ASSIGNMENTS + "/"):
            units[-1].append(o)
    if len(units) < 2:
        return [ops]
    cut = len(units) // 2
    return [head + [o for u in units[:cut] for o in u], head + [o for u in units[cut:] for o in u] + tail]


def transactions(p: Plan, snap: Snapshot, budget: int) -> list[list[Op]]:
    """The plan cut into transactions of at most ``budget`` bytes (a unit
    larger than that alone in one), each checking the group's version (a
    user's change since the read stops the rest). Every one but the last
    writes the group's progress into its status (observed generation still
    the old one, so the request stays the group's pending work); the last
    writes the final status and removes the request."""
    check = Op("check", layout.group(snap.name), version=snap.version)
    progress = Op("set", layout.group_status(snap.name), GroupStatus(
        observed_generation=p.observed_before, unplaced=len(p.created) + p.unplaced,
        message="removing: transaction 0000 of 0000, 00000 of 00000 new instance(s) committed, "
                "00000 of 00000 removal(s)").to_bytes())
    room = budget - check.size() - max(progress.size(), sum(o.size() for o in p.final))
    cuts: list[list[list[Op]]] = [[]]
    used = 0
    for unit in p.units:
        size = sum(o.size() for o in unit)
        if cuts[-1] and used + size > room:
            cuts.append([])
            used = 0
        cuts[-1].append(unit)
        used += size
    out = []
    created = gone = 0
    prefix = layout.group_instances(snap.name) + "/"
    for n, units in enumerate(cuts, start=1):
        ops = [check] + [o for u in units for o in u]
        created += sum(o.kind == "create" and o.path.startswith(prefix) for o in ops)
        gone += sum(o.kind in ("set", "delete") and o.path.startswith(prefix) for o in ops)
        if n == len(cuts):
            ops += p.final
        else:
            status = GroupStatus(observed_generation=p.observed_before,
                                 unplaced=len(p.created) - created + p.unplaced,
                                 message=f"{'placing' if p.created else 'removing'}: transaction {n} of "
                                         f"{len(cuts)}, {created} of "
                                         f"{len(p.created)} new instance(s) committed, {gone} of "
                                         f"{len(p.terminated) + p.dropped} removal(s)")
            ops.append(Op("set", layout.group_status(snap.name), status.to_bytes()))
        out.append(ops)
    return out


# -- reading, gathering offers and committing ----------------------------------

@dataclass
class PlacementResult:
    created: list[Instance] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    unplaced: int = 0
    trace: Trace | None = None
    # nothing written and nothing waited for (no instance to add, remove or
    # roll): a periodic sweep need not read the group again until what it
    # read moves (``Placer.reconcile_all``)
    settled: bool = False


def reconcile_group(zk, name: str, request_path: str | None = None, gatherer: Gatherer | None = None,
                    coordinator: str = "", via: str = "") -> PlacementResult | None:
    """Bring one group's assignments to its desired state: read, decide,
    gather offers, plan, commit in transactions of bounded size.

    Retries from scratch (new offers) when anything it read changed before
    a commit -- the group, or a node another coordinator placed on. What
    earlier transactions committed stays and counts as the group's
    instances on the next read: a coordinator that dies between two goes on
    from where it stopped, through the next one (the request is removed
    only by the last transaction).
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


def _record_trace(zk, trace: Trace, quiet: bool = False, progress: bool = False, wait: bool = True) -> None:
    """The last placement of a group, for GET .../placement and the log.
    ``progress``: between two transactions, without the offers and the
    split per node (they come with the last write): at 1,000 agents these
    writes of a 40 KB trace, one per transaction, took 14.0 of a 10,000-
    instance placement's 43 s (1.8 of 5.3 s at 100 agents), the
    coordinator's process sharing 2 cores with the fleet. ``wait`` False:
    sent without waiting for the answer (a progress write after the first)."""
    if not quiet:
        log.info("placement %s of group %s by %s: want %d, split over %d node(s), per rack %s, unplaced %d, "
                 "offers %.0f ms, commit %.0f ms in %d transaction(s), total %.0f ms, attempts %d",
                 trace.request, trace.group, trace.coordinator, trace.want, len(trace.split), trace.per_rack,
                 trace.unplaced, trace.offers_ms, trace.commit_ms, len(trace.chunks), trace.total_ms,
                 trace.attempts)
    whole = trace.to_dict()

    def slim() -> bytes:
        return json.dumps(dict(whole, racks={r: {k: v for k, v in e.items() if k != "offers"}
                                             for r, e in whole["racks"].items()},
                               split={} if progress else whole["split"]), sort_keys=True).encode()
    data = slim() if progress else json.dumps(whole, sort_keys=True).encode()
    if len(data) > 256 * 1024:      # 200 racks of offers still fit; never a huge znode
        data = slim()
    path = layout.group_placement(trace.group)
    if progress and not wait:
        # not waited for: behind the transactions sent ahead on the same
        # session, a synchronous write waited for all of them (~430 ms a
        # write at 1,000 fake agents). The first progress write of a
        # placement waits (nothing is in flight then), and makes the znode
        zk.set_async(path, data)
        return
    try:
        zk.set(path, data)
    except NoNodeError:
        try:
            if zk.exists(layout.group(trace.group)):
                zk.create(path, data)
        except (NodeExistsError, NoNodeError):
            pass


def read_snapshot(zk, name: str) -> Snapshot | None:
    """The group, its status, its instances' and the members' names in one
    round trip, then its instances' records and its flavor in a second.
    Read one after another, its five reads took 0.78 s at 1,000 fake agents
    (bench/placement.py: each round trip ~150 ms while the fleet's processes
    shared two cores), before the first offer was asked."""
    group_at = read_later(zk, layout.group(name), Group)
    status_at = read_later(zk, layout.group_status(name), GroupStatus)
    ids_at = zk.get_children_async(layout.group_instances(name))
    members_at = zk.get_children_async(layout.NODES)
    got, old = group_at(), status_at()
    if got is None:
        return None
    try:
        ids = ids_at.get()
    except NoNodeError:
        ids = []
    # names only: an instance's node is gone when its membership znode is
    members = set(members_at.get())
    group = got[0]
    flavor_at = read_later(zk, layout.flavor(group.flavor), Flavor)
    instances = read_named(zk, layout.group_instances(name), ids, Instance)
    return Snapshot(name=name, group=group, version=got[1], status=old[0] if old else None,
                    instances=instances, members=members, flavor=flavor_or_default(flavor_at(), group.flavor))


def _read_instances(zk, name: str, ids: list[str]) -> dict[str, tuple[Instance, int] | None]:
    pending = [(i, zk.get_async(layout.group_instance(name, i))) for i in ids]
    out: dict[str, tuple[Instance, int] | None] = {}
    for iid, res in pending:
        try:
            data, stat = res.get()
            out[iid] = (Instance.from_bytes(data), stat.version)
        except NoNodeError:
            out[iid] = None
    return out


def _existing(zk, paths: list[str]) -> set[str]:
    """Which of ``paths`` exist: async, one round trip for all of them."""
    pending = [(p, zk.exists_async(p)) for p in paths]
    return {p for p, res in pending if res.get() is not None}


def _try_reconcile(zk, name: str, request_path: str | None, gatherer: Gatherer,
                   trace: Trace) -> PlacementResult | None:
    t_read = time.monotonic()
    snap = read_snapshot(zk, name)
    trace.read_ms = round((time.monotonic() - t_read) * 1000, 1)
    if snap is None:
        if request_path:
            try:
                zk.delete(request_path)
            except NoNodeError:
                pass
        return PlacementResult()
    group = snap.group
    if request_path is None and not group.deleting and snap.status is not None \
            and snap.status.observed_generation < group.generation:
        return PlacementResult()     # a request for this generation is queued: it decides
    d = decide(snap)
    offers: list[NodeOffer] = []
    if d.want:
        trace.want = d.want
        t_offers = time.monotonic()
        offers = gatherer.offers(zk, trace.request, name, snap.flavor, d.want, trace)
        trace.offers_ms = round((time.monotonic() - t_offers) * 1000, 1)
    assigned = _existing(zk, [layout.assignment(i.node, name, i.id) for i, _ in d.terminate + d.drop])
    budget = chunk_bytes()
    t_plan = time.monotonic()
    p = plan(snap, d, offers, assigned, request_path, unit_bytes=budget // 2)
    result = PlacementResult(terminated=p.terminated if p else [], unplaced=p.unplaced if p else 0,
                             settled=p is None and not (d.want or d.terminate or d.drop or d.rolling
                                                        or group.deleting))
    if p is None:
        if group.deleting and not d.terminate:
            finish_delete_if_empty(zk, name)     # an earlier try lost a race (e.g. with an event)
        return result
    if d.want:
        trace.split, trace.per_rack, trace.unplaced = p.split, p.per_rack, p.unplaced
    txs = transactions(p, snap, budget)
    trace.plan_ms = round((time.monotonic() - t_plan) * 1000, 1)
    trace.chunks, trace.commit_ms = [], 0.0
    fault_point("before-commit", trace.coordinator)
    done = _Commit(zk, name, request_path, snap, trace, result).run(txs, p)
    if done is not True:
        return done
    trace.outcome = "committed" + (f"; {p.message}" if d.moved else "")
    for event in plan_events(snap, d, p, trace.coordinator):
        events.record_safely(zk, name, event, log)
    if group.deleting:
        finish_delete_if_empty(zk, name)
    if result.created or result.terminated:
        log.info("group %s gen %d: +%d -%d unplaced %d in %d transaction(s)", name, group.generation,
                 len(result.created), len(result.terminated), result.unplaced, len(trace.chunks))
    return result


class _Commit:
    """A plan's transactions, committed in order on the coordinator's session.

    After the first has committed, transactions that create instances are
    sent ahead, up to ``PIPELINE`` in flight: ZooKeeper applies one
    session's requests in its order. A transaction that fails stops the
    sending; those in flight commit or fail on their own guards, and the
    next round reads what is there. So a transaction is not sent ahead
    while one that guards the same node folder is in flight: a node's
    second unit expects the version after its first, which proves only
    that someone set the folder once -- another coordinator's placement
    that made the first fail would let the second commit on a stale offer.
    Measured at 1,000 fake agents on 2 cores (bench/placement.py): a
    write's round trip was ~430 ms under load,
    whatever its size (22 transactions 9.6 s, the progress writes between
    them 5.9 s more), so waiting for each before sending the next made the
    placement wait for ZooKeeper's queue 40 times in a row.

    What is never sent ahead: the first transaction (a conflict shows there
    before the rest is sent, and a coordinator stopped before the second
    has committed exactly one), a removals-only one (its conflict is
    repaired from fresh reads, ``renew_removals``), and the last (it
    finishes the request: only after all the others committed)."""

    def __init__(self, zk, name: str, request_path: str | None, snap: Snapshot, trace: Trace,
                 result: PlacementResult):
        self.zk, self.name, self.request_path, self.snap = zk, name, request_path, snap
        self.trace, self.result = trace, result
        self.prefix = layout.group_instances(name) + "/"
        self.inflight: deque = deque()   # (ops, async result, sent at, sent ahead?, folders guarded)
        self.sent = self.committed = self.renewals = 0
        self.busy_since = 0.0            # commit_ms: the time with a transaction in flight
        self.told = float("-inf")

    def run(self, txs: list[list[Op]], p: Plan):
        """True when every transaction committed; otherwise what
        ``_try_reconcile`` returns (None: a new round)."""
        queue = list(txs)
        while queue or self.inflight:
            ops = queue[0] if queue else None
            ahead = ops is not None and len(queue) > 1 and self.committed > 0 \
                and removals_of(self.name, ops) is None \
                and all(_folders(ops).isdisjoint(f[4]) for f in self.inflight)
            if ops is not None and (not self.inflight or (
                    ahead and len(self.inflight) < PIPELINE and all(f[3] for f in self.inflight))):
                queue.pop(0)
                self._send(ops, ahead, len(queue))
                continue
            ops, res, sent_at, _, _ = self.inflight.popleft()
            outcome = res.get()
            now_ = time.monotonic()
            ms = round((now_ - sent_at) * 1000, 1)
            if not self.inflight:
                self.trace.commit_ms = round(self.trace.commit_ms + (now_ - self.busy_since) * 1000, 1)
            made = {o.path[len(self.prefix):] for o in ops
                    if o.kind == "create" and o.path.startswith(self.prefix)}
            self.trace.chunks.append({"ops": len(ops), "bytes": sum(o.size() for o in ops), "ms": ms,
                                      "instances": len(made)})
            if not any(isinstance(r, Exception) for r in outcome):
                self.committed += 1
                self.result.created.extend(i for i in p.created if i.id in made)
                continue
            # the op that failed carries its error; ZooKeeper marks the ops before
            # it rolled back and those after it runtime-inconsistent
            failed = [(op, r) for op, r in zip(ops, outcome) if isinstance(r, Exception)
                      and not isinstance(r, (RolledBackError, RuntimeInconsistency))]
            conflicts, real = [op for op, _ in failed], [r for _, r in failed]
            # a node whose folder guard failed may have offered from a cache
            # behind ZooKeeper: the next round asks it to read anew (KeptBasis)
            self.trace.stale_nodes = sorted(op.path.rsplit("/", 1)[1] for op in conflicts
                                            if op.path.rsplit("/", 1)[0] == layout.ASSIGNMENTS)
            # An agent updating one of 500 instances to remove (its state as it
            # starts) fails the whole transaction, and a new round re-reads the
            # whole group while the agents go on: measured, a group of 10,000
            # deleted while its 100 agents were still starting it made 3 of 18
            # transactions in 5 minutes. So a removals-only transaction that
            # conflicts on its instances is renewed from fresh reads of its own
            # and cut in two (smaller ones conflict less), within a budget.
            removing = removals_of(self.name, ops)
            if conflicts and removing is not None and self.renewals < RENEWALS and all(
                    op.path.startswith((self.prefix, layout.ASSIGNMENTS + "/")) for op in conflicts):
                self.renewals += 1
                self.sent -= 1
                fresh = _read_instances(self.zk, self.name, [iid for iid, _ in removing])
                assigned = _existing(self.zk, [layout.assignment(i.node, self.name, i.id) for i, _ in
                                               (v for v in fresh.values() if v)])
                queue[0:0] = halves(self.name, renew_removals(self.name, ops, fresh, assigned, self.snap.flavor))
                continue
            self._drain()
            if real and self.request_path and isinstance(real[0], NoNodeError) \
                    and not self.zk.exists(self.request_path):
                return PlacementResult()          # another leader handled it meanwhile
            total = self.sent + len(queue)
            n = self.committed + 1
            log.info("group %s: transaction %d of %d failed on %s (%s); a new round", self.name, n, total,
                     conflicts[0].path if conflicts else "?", real[:1])
            self.trace.outcome = (f"retried after {type(real[0]).__name__ if real else 'a conflict'}"
                                  f" in transaction {n} of {total}")
            return None
        return True

    def _send(self, ops: list[Op], ahead: bool, left: int) -> None:
        if self.sent:
            if self.trace.want and time.monotonic() - self.told >= PROGRESS_SECONDS:
                self.trace.outcome = (f"committing: {self.committed} of {self.sent + 1 + left} "
                                      f"transaction(s) done")
                _record_trace(self.zk, self.trace, quiet=True, progress=True, wait=self.told < 0)
                self.told = time.monotonic()
            fault_point("placement.chunk", self.trace.coordinator)
        tx = self.zk.transaction()
        for op in ops:
            op.add_to(tx)
        if not self.inflight:
            self.busy_since = time.monotonic()
        self.inflight.append((ops, tx.commit_async(), time.monotonic(), ahead, _folders(ops)))
        self.sent += 1

    def _drain(self) -> None:
        """Wait for what was sent ahead of a failed transaction; what of it
        committed stays (the next round reads it)."""
        while self.inflight:
            try:
                self.inflight.popleft()[1].get()
            except Exception:          # the session's trouble: the next round finds out
                pass


def _folders(ops: list[Op]) -> set[str]:
    """The node folders a transaction's units guard (set with a version)."""
    return {o.path for o in ops if o.kind == "set" and o.path.startswith(layout.ASSIGNMENTS + "/")}


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
        self._leaders: tuple[list[str], float] | None = None   # (names, monotonic time read)
        self._settled: dict[str, tuple[tuple, float]] = {}     # group -> (its sweep guard, monotonic time)

    def forget_leaders(self) -> None:
        """The membership changed: the next share reads the leaders again."""
        self._leaders = None

    def _leader_names(self) -> list[str]:
        """The compute rack leaders, sorted: read again when the membership
        changed (``forget_leaders``), when this leader is not among them, or
        after LEADERS_SECONDS. Every leader read all racks' leaders every
        round before, O(racks^2) a round for the cluster: ~100 ms a read at
        100 racks, and most of the CPU a settled fleet of 1,000 fake agents
        used (bench/placement.py)."""
        cached = self._leaders
        if cached is not None and time.monotonic() - cached[1] < LEADERS_SECONDS \
                and self.identifier in cached[0]:
            return cached[0]
        names = sorted(n.name for n in rack_leaders(self.zk, "compute").values())
        self._leaders = (names, time.monotonic())
        return names

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
        if via == "queue":
            if self._being_placed(got[0].group):
                return None
            log.info("claiming request %s (not handed over within %.0fs)", seq, self.grace)

        def run():
            if not self.zk.exists(path):
                return None            # handled while we waited for the lock
            return reconcile_group(self.zk, got[0].group, path, self.gatherer, self.identifier, via)
        return self._locked(got[0].group, run)

    def _being_placed(self, group: str) -> bool:
        """Someone holds (or waits for) the group's lock: a request older
        than the grace is still being placed, not lost. Every leader claimed
        it otherwise and queued on the lock, ~100 of them 5 s into a
        10,000-instance placement at 1,000 agents, each with its own reads
        while the coordinator's transactions waited on the same ZooKeeper.
        A coordinator that died: its lock goes with its session, and the
        next round claims the request."""
        try:
            return bool(self.zk.get_children(layout.group_lock(group)))
        except NoNodeError:
            return False

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
            if self.handle(seq) is not None:
                done += 1
        return done

    def my_share(self, groups: list[str]) -> list[str]:
        leaders = self._leader_names()
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
            # read before the sweep: whatever moves after it moves the next one
            guard = self._sweep_guard(name)
            seen = self._settled.get(name)
            if seen is not None and seen[0] == guard and time.monotonic() - seen[1] < FULL_SWEEP_SECONDS:
                continue
            result = self._locked(name, lambda: reconcile_group(self.zk, name, None, self.gatherer,
                                                                self.identifier), timeout=1)
            if result is not None and result.settled:
                self._settled[name] = (guard, time.monotonic())
            else:
                self._settled.pop(name, None)
        for name in set(self._settled) - set(groups):
            del self._settled[name]
        self._forget_locks(set(groups))
        events.forget_orphans(self.zk)

    def _sweep_guard(self, name: str) -> tuple:
        """What a settled group's sweep depends on, in one round trip: the
        group's and its status' versions, its instances' names (the folder's
        cversion: one added or removed) and the members' (a node gone). The
        instances' own data is left out: an agent's state writes change no
        decision of a settled group (a rolling update, which waits for them
        to be ready, is never settled). Every leader round read the whole of
        each of its groups before: at 10,000 instances, 10,000 reads every
        ~5 s by its leader (ZooKeeper at 0.6 of a core in bursts, a fleet of
        1,000 fake agents at 1 core, bench/placement.py)."""
        stats = [self.zk.exists_async(p) for p in (layout.group(name), layout.group_status(name),
                                                   layout.group_instances(name), layout.NODES)]
        got = [res.get() for res in stats]
        return tuple(None if st is None else (st.version, st.cversion) for st in got)

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
