"""The coordinator's plan, without ZooKeeper: from what it read (a
snapshot) and the offers to the writes, and the writes cut into
transactions that stay under ZooKeeper's request size limit."""
from __future__ import annotations

from collections import Counter

import pytest

from dataclasses import replace

from cowfleet.agents.placement import (CHUNK_BYTES, Snapshot, decide, halves, plan, removals_of, renew_removals,
                                       transactions)
from cowfleet.models import DEFAULT_FLAVORS, Group, GroupStatus, Instance, InstanceState
from cowfleet.protocol import NodeOffer
from cowfleet.zk import layout

SMALL = DEFAULT_FLAVORS[0]
REQUEST = f"{layout.REQUESTS}/req-0000000001"


def fleet(nodes: int, racks: int, room: int = 100, version: int = 7) -> list[NodeOffer]:
    return [NodeOffer(node=f"r{n % racks:03d}-c{n:04d}", rack=f"r{n % racks:03d}", count=room, version=version)
            for n in range(nodes)]


def snapshot(size: int, instances=(), generation: int = 2, observed: int = 1, members=None, **kw) -> Snapshot:
    group = Group(name="web", image="img", flavor=SMALL.name, size=size, generation=generation, **kw)
    return Snapshot(name="web", group=group, version=5, status=GroupStatus(observed_generation=observed),
                    instances=list(instances), members=set(members or ()), flavor=SMALL)


def created(ops) -> list[Instance]:
    prefix = layout.group_instances("web") + "/"
    return [Instance.from_bytes(o.data) for o in ops if o.kind == "create" and o.path.startswith(prefix)]


def test_a_10000_instance_group_over_1000_nodes_in_bounded_transactions():
    offers = fleet(1000, 100)
    snap = snapshot(10_000)
    d = decide(snap)
    assert d.want == 10_000
    p = plan(snap, d, offers, set(), REQUEST, unit_bytes=CHUNK_BYTES // 2)
    txs = transactions(p, snap, CHUNK_BYTES)
    assert len(txs) > 1
    for ops in txs:
        assert sum(o.size() for o in ops) <= CHUNK_BYTES
        # every transaction checks the group: a user's change stops the rest
        assert ops[0].kind == "check" and ops[0].path == layout.group("web") and ops[0].version == 5
    new = [i for ops in txs for i in created(ops)]
    assert len(new) == len({i.id for i in new}) == 10_000
    assert set(Counter(i.node for i in new).values()) == {10}
    # the request is removed by the last transaction only, with the final status
    deletes = [i for i, ops in enumerate(txs) for o in ops if o.kind == "delete" and o.path == REQUEST]
    assert deletes == [len(txs) - 1]
    statuses = [GroupStatus.from_bytes(o.data) for ops in txs for o in ops if o.path == layout.group_status("web")]
    assert len(statuses) == len(txs)
    assert [s.observed_generation for s in statuses] == [1] * (len(txs) - 1) + [2]
    assert statuses[0].message.startswith(f"placing: transaction 1 of {len(txs)}")
    assert statuses[-1] == GroupStatus(observed_generation=2, unplaced=0, message="")
    # pending (unplaced) counts down as transactions commit
    assert [s.unplaced for s in statuses] == sorted((s.unplaced for s in statuses), reverse=True)


def test_a_node_whose_instances_span_transactions_chains_its_version_guard():
    offers = fleet(2, 1, room=50, version=3)
    snap = snapshot(60)
    p = plan(snap, decide(snap), offers, set(), REQUEST, unit_bytes=4000)
    txs = transactions(p, snap, 8000)
    assert len(txs) > 2
    for node in ("r000-c0000", "r000-c0001"):
        guards = [o.version for ops in txs for o in ops if o.path == layout.assignments(node)]
        assert guards == list(range(3, 3 + len(guards))) and len(guards) > 1
        # each guard precedes the instances it covers, in the same transaction
        for ops in txs:
            mine = [k for k, o in enumerate(ops) if o.kind == "create" and o.path.startswith(layout.assignments(node))]
            if mine:
                assert any(o.path == layout.assignments(node) and k < mine[0] for k, o in enumerate(ops))
    assert sum(len(created(ops)) for ops in txs) == 60


def test_a_coordinator_that_stops_between_transactions_is_continued_exactly():
    offers = fleet(10, 2, room=20)
    snap = snapshot(100)
    txs = transactions(plan(snap, decide(snap), offers, set(), REQUEST, unit_bytes=2000), snap, 4000)
    assert len(txs) >= 3
    done = [i for ops in txs[:2] for i in created(ops)]          # then it died
    again = snapshot(100, [(i, 0) for i in done], members={o.node for o in offers})
    d = decide(again)
    assert d.want == 100 - len(done) and not d.terminate
    left = [dict(o.__dict__, count=o.count - sum(i.node == o.node for i in done)) for o in offers]
    p = plan(again, d, [NodeOffer(**o) for o in left], set(), REQUEST)
    ids = [i.id for i in done] + [i.id for i in p.created]
    assert len(ids) == len(set(ids)) == 100
    assert max(Counter(i.node for i in done + p.created).values()) <= 20


def test_removals_are_units_of_their_own_and_touch_only_existing_assignments():
    members = {"n1", "n2"}
    insts = [(Instance(id=f"web-{k}", group="web", node="n1" if k < 3 else "gone", rack="r", image="img",
                       flavor=SMALL.name, generation=2, state=InstanceState.READY), 4) for k in range(5)]
    snap = snapshot(1, insts, members=members)
    d = decide(snap)
    assert len(d.terminate) == 2 and len(d.drop) == 2 and d.moved == {"gone": 2}
    kept = {i.id for i, _ in insts} - {i.id for i, _ in d.terminate} - {i.id for i, _ in d.drop}
    assert len(kept) == 1
    assigned = {layout.assignment("n1", "web", d.terminate[0][0].id)}
    p = plan(snap, d, [], assigned, None)
    term = [u for u in p.units if u[0].kind == "set"]
    assert [len(u) for u in term] == [2, 1]
    assert InstanceState.TERMINATING == Instance.from_bytes(term[0][0].data).state and term[0][0].version == 4
    assert all(u[0].kind == "delete" and u[0].version == 4 for u in p.units if u not in term)
    assert d.terminate[0][0].state == InstanceState.READY       # the snapshot is not changed
    txs = transactions(p, snap, CHUNK_BYTES)
    assert len(txs) == 1 and not any(o.path.startswith(layout.REQUESTS) for o in txs[0])


def test_nothing_to_change_writes_nothing():
    insts = [(Instance(id="web-1", group="web", node="n1", rack="r", image="img", flavor=SMALL.name,
                       generation=2), 0)]
    snap = snapshot(1, insts, observed=2, members={"n1"})
    snap.status = GroupStatus(observed_generation=2)
    assert plan(snap, decide(snap), [], set(), None) is None
    assert plan(snap, decide(snap), [], set(), REQUEST) is not None      # a request is always answered


@pytest.mark.parametrize("room, unplaced", [(3, 4), (10, 0)])
def test_unplaced_instances_are_said_why(room, unplaced):
    snap = snapshot(10)
    p = plan(snap, decide(snap), fleet(2, 1, room=room), set(), REQUEST)
    assert p.unplaced == p.status.unplaced == unplaced and len(p.created) == 10 - unplaced
    assert ("not placed" in p.status.message) == bool(unplaced)


def test_a_removals_transaction_is_renewed_from_fresh_reads_of_its_own_instances():
    """An agent changed one of the instances meanwhile (a new version),
    finished another (gone), and a third was already terminating: the
    renewed transaction guards the new version and leaves the others out."""
    members = {"n1"}
    insts = [(Instance(id=f"web-{k}", group="web", node="n1", rack="r", image="img", flavor=SMALL.name,
                       generation=2, state=InstanceState.RUNNING), 1) for k in range(4)]
    snap = snapshot(0, insts, members=members)
    d = decide(snap)
    assigned = {layout.assignment("n1", "web", f"web-{k}") for k in range(4)}
    p = plan(snap, d, [], assigned, REQUEST)
    [ops] = transactions(p, snap, CHUNK_BYTES)
    assert sorted(removals_of("web", ops)) == [(f"web-{k}", False) for k in range(4)]
    moved = replace(insts[0][0], state=InstanceState.READY)
    fresh = {"web-0": (moved, 2), "web-1": None,
             "web-2": (replace(insts[2][0], state=InstanceState.TERMINATING), 3), "web-3": insts[3]}
    again = renew_removals("web", ops, fresh, assigned, SMALL)
    assert again[0] == ops[0] and again[-2:] == ops[-2:]            # the group's check; status and request
    sets = {o.path: o for o in again if o.path.startswith(layout.group_instances("web") + "/")}
    assert set(sets) == {layout.group_instance("web", "web-0"), layout.group_instance("web", "web-3")}
    assert sets[layout.group_instance("web", "web-0")].version == 2
    renewed = Instance.from_bytes(sets[layout.group_instance("web", "web-0")].data)
    assert renewed.state == InstanceState.TERMINATING and renewed == replace(moved, state=InstanceState.TERMINATING)
    assert sum(o.path.startswith(layout.ASSIGNMENTS) for o in again) == 2


def test_a_transaction_that_creates_is_not_renewed():
    snap = snapshot(3)
    p = plan(snap, decide(snap), fleet(3, 1), set(), REQUEST)
    [ops] = transactions(p, snap, CHUNK_BYTES)
    assert removals_of("web", ops) is None


def test_a_renewed_removals_transaction_is_cut_in_two_with_the_status_in_the_second():
    insts = [(Instance(id=f"web-{k}", group="web", node="n1", rack="r", image="img", flavor=SMALL.name,
                       generation=2), 1) for k in range(5)]
    snap = snapshot(0, insts, members={"n1"})
    assigned = {layout.assignment("n1", "web", f"web-{k}") for k in range(5)}
    [ops] = transactions(plan(snap, decide(snap), [], assigned, REQUEST), snap, CHUNK_BYTES)
    first, second = halves("web", ops)
    assert first[0] == second[0] == ops[0]
    assert second[-2:] == ops[-2:] and not any(o.path == layout.group_status("web") for o in first)
    assert sorted(removals_of("web", first) + removals_of("web", second)) == sorted(removals_of("web", ops))
    assert len(first) == 1 + 2 * 2 and len(second) == 1 + 3 * 2 + 2     # an instance and its assignment each
    assert halves("web", halves("web", first)[0]) == [halves("web", first)[0]]
