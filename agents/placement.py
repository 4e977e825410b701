"""Turning a group's desired state into assignments (the leader's job).

This is the simple placement of the walking skeleton: a compute rack leader
claims each queued request under one cluster-wide kazoo Lock, computes the
instances to add or remove, and commits them together with the request's
removal in ONE ZooKeeper transaction (the commit point). A leader that dies
before the commit leaves the request queued for the next one; after it, the
request is gone: exactly once. The per-rack offer hand-shake replaces the
node choice here in a later step; the commit stays the same.
"""
from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field

from kazoo.exceptions import NoNodeError

from cowfleet.models import (DEFAULT_FLAVORS, DeployRequest, Flavor, Group, GroupStatus, Instance,
                             InstanceState, NodeInfo)
from cowfleet.zk import layout
from cowfleet.zk.connection import read, read_children
from cowfleet.zk.groups import finish_delete_if_empty

log = logging.getLogger(__name__)

DESIRED_RUN = "run"
DESIRED_TERMINATE = "terminate"


def assignment_data(desired: str, flavor: Flavor) -> bytes:
    return json.dumps({"desired": desired, "vcpus": flavor.vcpus,
                       "memory_mib": flavor.memory_mib}).encode()


def parse_assignment_data(data: bytes) -> dict:
    try:
        return json.loads(data.decode() or "{}")
    except ValueError:
        return {}


def flavor_named(zk, name: str) -> Flavor | None:
    got = read(zk, layout.flavor(name), Flavor)
    if got:
        return got[0]
    return next((f for f in DEFAULT_FLAVORS if f.name == name), None)


@dataclass
class NodeLoad:
    node: NodeInfo
    vcpus: int = 0
    memory_mib: int = 0
    of_group: int = 0

    def fits(self, flavor: Flavor) -> bool:
        cap = self.node.capacity
        return (self.vcpus + flavor.vcpus <= cap.get("vcpus", 0)
                and self.memory_mib + flavor.memory_mib <= cap.get("memory_mib", 0))

    def take(self, flavor: Flavor) -> None:
        self.vcpus += flavor.vcpus
        self.memory_mib += flavor.memory_mib
        self.of_group += 1


def node_loads(zk, group_name: str) -> dict[str, NodeLoad]:
    """Healthy compute nodes with what their assignments already use."""
    loads = {}
    for node, _ in read_children(zk, layout.NODES, NodeInfo):
        if node.role != "compute" or not node.healthy:
            continue
        load = NodeLoad(node)
        try:
            children = zk.get_children(layout.assignments(node.name))
        except NoNodeError:
            children = []
        pending = [(c, zk.get_async(f"{layout.assignments(node.name)}/{c}")) for c in children]
        for child, res in pending:
            try:
                data, _ = res.get()
            except NoNodeError:
                continue
            a = parse_assignment_data(data)
            if a.get("desired") != DESIRED_RUN:
                continue
            load.vcpus += int(a.get("vcpus", 0))
            load.memory_mib += int(a.get("memory_mib", 0))
            if layout.parse_assignment(child)[0] == group_name:
                load.of_group += 1
        loads[node.name] = load
    return loads


def choose_nodes(count: int, flavor: Flavor, loads: dict[str, NodeLoad], strategy: str,
                 max_per_node: int | None) -> list[NodeInfo]:
    """Pick a node for each of ``count`` new instances.

    spread: the node with the fewest instances of this group (then the least
    used); pack: the most used node that still fits. Returns fewer nodes than
    asked when capacity runs out.
    """
    chosen = []
    for _ in range(count):
        fit = [l for l in loads.values() if l.fits(flavor)
               and (max_per_node is None or l.of_group < max_per_node)]
        if not fit:
            break
        if strategy == "pack":
            best = max(fit, key=lambda l: (l.memory_mib, l.vcpus, l.node.name))
        else:
            best = min(fit, key=lambda l: (l.of_group, l.memory_mib, l.node.name))
        best.take(flavor)
        chosen.append(best.node)
    return chosen


def _victims(live: list[Instance], excess: int) -> list[Instance]:
    """Which instances go on scale-in: failed first, then the least far
    along, then the newest."""
    rank = {InstanceState.FAILED: 0, InstanceState.PENDING: 1, InstanceState.STARTING: 2,
            InstanceState.RUNNING: 3, InstanceState.READY: 4}
    return sorted(live, key=lambda i: (rank.get(i.state, 0), -i.created_at))[:excess]


@dataclass
class PlacementResult:
    created: list[Instance] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    unplaced: int = 0


def reconcile_group(zk, name: str, request_path: str | None = None) -> PlacementResult | None:
    """Bring one group's assignments to its desired state in one transaction.

    Retries from scratch when anything it read changed before the commit.
    """
    for _ in range(20):
        result = _try_reconcile(zk, name, request_path)
        if result is not None:
            return result
    log.warning("group %s: gave up after repeated concurrent changes", name)
    return None


def _try_reconcile(zk, name: str, request_path: str | None) -> PlacementResult | None:
    got = read(zk, layout.group(name), Group)
    if got is None:
        if request_path:
            try:
                zk.delete(request_path)
            except NoNodeError:
                pass
        return PlacementResult()
    group, gversion = got
    instances = read_children(zk, layout.group_instances(name), Instance)
    loads = node_loads(zk, name)
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
    for inst, version in instances:
        if inst.state == InstanceState.TERMINATING:
            if inst.node not in loads:
                # its agent is gone: nobody else will remove it; a returning
                # agent destroys the domain it no longer has an assignment for
                _drop(zk, tx, name, inst, version)
                dropped += 1
            continue
        if inst.node not in loads:
            _drop(zk, tx, name, inst, version)    # re-placed below
            dropped += 1
            continue
        live.append((inst, version))

    message = ""
    if group.deleting:
        for inst, version in live:
            terminate(inst, version)
    elif flavor is None:
        message = f"flavor '{group.flavor}' does not exist"
    else:
        current = [(i, v) for i, v in live if group.is_current(i)]
        outdated = [(i, v) for i, v in live if not group.is_current(i)]
        if outdated:
            retire, add = _rolling_step(group, current, outdated)
            for inst, version in retire:
                terminate(inst, version)
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
            for inst in _victims([i for i, _ in live], excess):
                terminate(inst, versions[inst.id])
        elif excess < 0:
            missing = -excess
            nodes = choose_nodes(missing, flavor, loads, group.placement.get("strategy", "spread"),
                                 group.placement.get("max_per_node"))
            taken = {i.id for i, _ in instances}
            for node in nodes:
                iid = _new_id(name, taken)
                inst = Instance(id=iid, group=name, node=node.name, rack=node.rack, image=group.image,
                                flavor=group.flavor, generation=group.generation)
                tx.create(layout.group_instance(name, iid), inst.to_bytes())
                tx.create(layout.assignment(node.name, name, iid), assignment_data(DESIRED_RUN, flavor))
                result.created.append(inst)
            result.unplaced = missing - len(nodes)
            if result.unplaced and not outdated:
                limit = group.placement.get("max_per_node")
                message = (f"{result.unplaced} instance(s) not placed: none of {len(loads)} healthy "
                           f"compute node(s) has room for flavor '{flavor.name}' ({flavor.vcpus} vCPU, "
                           f"{flavor.memory_mib} MiB)" + (f" within max_per_node={limit}" if limit else ""))
    status = GroupStatus(observed_generation=group.generation, unplaced=result.unplaced, message=message)
    old = read(zk, layout.group_status(name), GroupStatus)
    if (not request_path and not result.created and not result.terminated and not dropped
            and old is not None and old[0] == status):
        return result                 # nothing to change: write nothing
    tx.set_data(layout.group_status(name), status.to_bytes())
    if request_path:
        tx.delete(request_path)
    outcome = tx.commit()
    failures = [r for r in outcome if isinstance(r, Exception)]
    if failures:
        real = [r for r in failures if not type(r).__name__ == "RolledBackError"]
        if real and request_path and isinstance(real[0], NoNodeError) and not zk.exists(request_path):
            return PlacementResult()          # another leader handled it meanwhile
        log.debug("group %s: transaction failed (%s); retrying", name, real)
        return None
    if group.deleting:
        finish_delete_if_empty(zk, name)
    if result.created or result.terminated:
        log.info("group %s gen %d: +%d -%d unplaced %d", name, group.generation,
                 len(result.created), len(result.terminated), result.unplaced)
    return result


def _rolling_step(group: Group, current: list, outdated: list) -> tuple[list, int]:
    """One step of a rolling replacement within ``update_policy``.

    Returns (outdated instances to retire now, new instances to add now).
    Availability (ready instances, old or new) never drops below
    ``size - max_unavailable``; live instances never exceed ``size + max_surge``.
    Later steps follow as new instances become ready (the leader re-checks
    every group periodically).
    """
    policy = group.update_policy or {}
    surge = int(policy.get("max_surge", 1))
    unavailable = int(policy.get("max_unavailable", 1))
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
    """The leader side: claim queued requests, and re-check every group
    periodically (capacity that appears, nodes that vanish)."""

    def __init__(self, zk, identifier: str):
        self.zk = zk
        self.identifier = identifier

    def process_requests(self) -> int:
        done = 0
        try:
            names = sorted(self.zk.get_children(layout.REQUESTS))
        except NoNodeError:
            return 0
        if not names:
            return 0
        lock = self.zk.Lock(layout.PLACEMENT_LOCK, identifier=self.identifier)
        if not lock.acquire(timeout=10):
            return 0
        try:
            for seq in names:
                path = layout.request(seq)
                got = read(self.zk, path, DeployRequest)
                if got is None:
                    continue
                reconcile_group(self.zk, got[0].group, path)
                done += 1
        finally:
            lock.release()
        return done

    def reconcile_all(self) -> None:
        lock = self.zk.Lock(layout.PLACEMENT_LOCK, identifier=self.identifier)
        if not lock.acquire(timeout=10):
            return
        try:
            for name in self.zk.get_children(layout.GROUPS):
                reconcile_group(self.zk, name)
        finally:
            lock.release()
