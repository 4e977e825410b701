"""Offers and the split of new instances over nodes and racks, and which
instances go on scale-in."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from cowfleet.agents.handshake import NodeOffer, Reservations
from cowfleet.agents.policy import offer_count, split
from cowfleet.agents import placement as pl
from cowfleet.agents.placement import _victims
from cowfleet.protocol import (DESIRED_RUN, DESIRED_TERMINATE, Assignment, assignment_data,
                               parse_assignment_data)
from cowfleet.models import DeployRequest, Flavor, Instance, InstanceState

SMALL = Flavor("small", vcpus=1, memory_mib=128, disk_gib=1)
LARGE = Flavor("large", vcpus=2, memory_mib=512, disk_gib=10)


def offers(*caps, flavor=SMALL, want=10_000, racks=None, used=None, of_group=None) -> list[NodeOffer]:
    """offers((vcpus, mem), ...) -> nodes n1, n2, ... with that capacity,
    ``used``: {node: (vcpus, mem)}, ``of_group``: {node: n}, ``racks``: list."""
    out = []
    for i, (vcpus, mem) in enumerate(caps, start=1):
        name = f"n{i}"
        uv, um = (used or {}).get(name, (0, 0))
        count = offer_count({"vcpus": vcpus, "memory_mib": mem}, uv, um, (0, 0), flavor, want)
        out.append(NodeOffer(node=name, rack=(racks or ["r1"] * len(caps))[i - 1], count=count, version=0,
                             of_group=(of_group or {}).get(name, 0), used_vcpus=uv, used_memory_mib=um))
    return out


def total(take: dict) -> int:
    return sum(take.values())


@pytest.mark.parametrize("count, n_nodes", [(1, 3), (3, 3), (7, 3), (10, 4), (13, 5), (2, 5)])
def test_spread_balances_nodes_within_one(count, n_nodes):
    take = split(offers(*[(64, 65536)] * n_nodes), count, "spread", None)
    assert total(take) == count
    counts = [take.get(f"n{i}", 0) for i in range(1, n_nodes + 1)]
    assert max(counts) - min(counts) <= 1, counts


@pytest.mark.parametrize("count, racks, per_rack", [(1000, 20, 10), (7, 3, 2), (31, 4, 3), (5, 5, 1)])
def test_spread_balances_racks_within_one(count, racks, per_rack):
    names = [f"r{r}" for r in range(racks) for _ in range(per_rack)]
    os = offers(*[(400, 1 << 20)] * len(names), racks=names)
    take = split(os, count, "spread", None)
    assert total(take) == count
    rack_of = {o.node: o.rack for o in os}
    per = Counter()
    for node, n in take.items():
        per[rack_of[node]] += n
    counts = [per.get(f"r{r}", 0) for r in range(racks)]
    assert max(counts) - min(counts) <= 1, counts
    assert max(take.values()) - min(take.get(o.node, 0) for o in os) <= 1


def test_spread_fills_the_rack_with_fewer_instances_of_the_group_first():
    os = offers((64, 65536), (64, 65536), (64, 65536), racks=["a", "a", "b"], of_group={"n1": 2, "n2": 2})
    assert split(os, 3, "spread", None) == {"n3": 3}


def test_spread_balances_when_a_rack_runs_out():
    os = offers((1, 65536), (64, 65536), racks=["a", "b"])
    assert split(os, 5, "spread", None) == {"n1": 1, "n2": 4}


def test_spread_takes_existing_instances_of_the_group_into_account():
    take = split(offers(*[(64, 65536)] * 3, of_group={"n1": 3, "n2": 1}), 4, "spread", None)
    assert take == {"n3": 2, "n2": 2}


def test_spread_prefers_the_node_with_more_room_on_a_tie():
    take = split(offers((8, 4096), (8, 4096), used={"n1": (2, 2048)}), 1, "spread", None)
    assert take == {"n2": 1}


def test_pack_fills_one_node_before_the_next():
    take = split(offers((4, 65536), (4, 65536), (4, 65536)), 10, "pack", None)
    assert total(take) == 10
    assert sorted(take.values()) == [2, 4, 4]


def test_pack_prefers_the_most_used_node():
    take = split(offers((8, 4096), (8, 4096), (8, 4096), used={"n2": (1, 1024)}), 3, "pack", None)
    assert take == {"n2": 3}


def test_pack_skips_a_full_node():
    take = split(offers((8, 4096), (8, 4096), used={"n1": (0, 4096 - 100)}), 2, "pack", None)
    assert take == {"n2": 2}


@pytest.mark.parametrize("strategy", ["spread", "pack"])
@pytest.mark.parametrize("max_per_node", [1, 2, 3])
def test_max_per_node_respected(strategy, max_per_node):
    take = split(offers(*[(64, 65536)] * 3), 20, strategy, max_per_node)
    assert take == {"n1": max_per_node, "n2": max_per_node, "n3": max_per_node}


def test_max_per_node_counts_existing_instances():
    assert split(offers((64, 65536), (64, 65536), of_group={"n1": 2}), 5, "pack", 2) == {"n2": 2}


@pytest.mark.parametrize("strategy", ["spread", "pack"])
@pytest.mark.parametrize("flavor", [SMALL, LARGE], ids=["small", "large"])
def test_capacity_never_exceeded(strategy, flavor):
    take = split(offers((3, 65536), (64, 600), (5, 1100), (0, 0), (2, 511), flavor=flavor), 100, strategy, None)
    if flavor is SMALL:
        # n1: 3 vCPU; n2: 600 MiB -> 4; n3: min(5, 8) = 5; n4 nothing; n5: min(2, 3) = 2
        assert take == {"n1": 3, "n2": 4, "n3": 5, "n5": 2}
    else:
        # n1: 1 (2 of 3 vCPU); n2: 1 (512 of 600 MiB); n3: min(2, 2) = 2; n5: 511 MiB < 512
        assert take == {"n1": 1, "n2": 1, "n3": 2}


def test_existing_load_from_other_groups_counts_against_capacity():
    assert split(offers((4, 1024), used={"n1": (3, 100)}), 5, "spread", None) == {"n1": 1}


@pytest.mark.parametrize("strategy", ["spread", "pack"])
def test_fewer_when_capacity_runs_out(strategy):
    assert split(offers((2, 65536), (1, 65536)), 5, strategy, None) == {"n1": 2, "n2": 1}


def test_no_offers_or_zero_count():
    assert split([], 3, "spread", None) == {}
    assert split(offers((4, 4096)), 0, "spread", None) == {}


def test_offer_count_is_inclusive_at_capacity_and_honours_reservations():
    cap = {"vcpus": 4, "memory_mib": 512}
    assert offer_count(cap, 0, 0, (0, 0), SMALL, 100) == 4
    assert offer_count(cap, 3, 384, (0, 0), SMALL, 100) == 1
    assert offer_count(cap, 4, 0, (0, 0), SMALL, 100) == 0
    assert offer_count(cap, 0, 0, (2, 128), SMALL, 100) == 2
    assert offer_count(cap, 0, 0, (0, 0), SMALL, 3) == 3
    assert offer_count({}, 0, 0, (0, 0), SMALL, 3) == 0
    assert offer_count(cap, 5, 0, (0, 0), SMALL, 3) == 0      # over-used: never negative


def test_reservations_count_other_requests_until_released_or_expired():
    r = Reservations(ttl=60)
    r.hold("req-1", 2, 256)
    r.hold("req-2", 1, 128)
    assert r.held_by_others("req-1") == (1, 128)
    assert r.held_by_others("req-3") == (3, 384)
    r.release("req-2")
    assert r.held_by_others("req-1") == (0, 0)
    r.hold("req-1", 0, 0)                 # an offer of nothing holds nothing
    assert len(r) == 0
    expired = Reservations(ttl=-1)
    expired.hold("req-9", 4, 512)
    assert expired.held_by_others("req-1") == (0, 0)


def test_assignment_data_round_trip():
    data = assignment_data("run", LARGE)
    assert parse_assignment_data(data) == {"desired": "run", "vcpus": 2, "memory_mib": 512}
    assert parse_assignment_data(b"") == {}
    assert parse_assignment_data(b"not json") == {}
    assert parse_assignment_data(b"[1]") == {}
    a = Assignment.from_bytes(data)
    assert a == Assignment(DESIRED_RUN, 2, 512) and a.runs and a.to_bytes() == data
    gone = Assignment.from_bytes(assignment_data(DESIRED_TERMINATE, LARGE))
    assert not gone.runs and gone.vcpus == 2
    assert not Assignment.from_bytes(b"garbage").runs      # unreadable: never counted as running


# --- _victims ---------------------------------------------------------------------

def inst(iid: str, state: str, created_at: float) -> Instance:
    return Instance(id=iid, group="g", node="n1", rack="r1", image="i", flavor="small",
                    generation=1, state=state, created_at=created_at)


def test_victims_order_by_state():
    live = [inst("ready", InstanceState.READY, 1), inst("running", InstanceState.RUNNING, 1),
            inst("starting", InstanceState.STARTING, 1), inst("pending", InstanceState.PENDING, 1),
            inst("failed", InstanceState.FAILED, 1)]
    order = [i.id for i in _victims(live, len(live))]
    assert order == ["failed", "pending", "starting", "running", "ready"]


def test_victims_newest_first_within_a_state():
    live = [inst("old", InstanceState.READY, 1.0), inst("new", InstanceState.READY, 3.0),
            inst("mid", InstanceState.READY, 2.0)]
    assert [i.id for i in _victims(live, 3)] == ["new", "mid", "old"]


def test_victims_state_beats_age():
    live = [inst("new-ready", InstanceState.READY, 100.0), inst("old-failed", InstanceState.FAILED, 1.0)]
    assert [i.id for i in _victims(live, 1)] == ["old-failed"]


@pytest.mark.parametrize("excess", [0, 1, 2, 5])
def test_victims_takes_exactly_excess(excess):
    live = [inst(f"i{k}", InstanceState.READY, k) for k in range(3)]
    assert len(_victims(live, excess)) == min(excess, 3)


def test_victims_does_not_modify_the_input():
    live = [inst("a", InstanceState.READY, 1), inst("b", InstanceState.FAILED, 2)]
    _victims(live, 1)
    assert [i.id for i in live] == ["a", "b"]


def placed(iid, rack, node, created_at=1.0, state=InstanceState.READY):
    return Instance(id=iid, group="g", node=node, rack=rack, image="i", flavor="small",
                    generation=1, state=state, created_at=created_at)


def test_spread_scale_in_keeps_racks_and_nodes_balanced():
    # 3 racks x 2 nodes x 1 instance, plus 3 more on rack r1 (created last): 9 live
    live = [placed(f"{r}{n}", r, f"{r}-n{n}", created_at=k) for k, (r, n) in
            enumerate((r, n) for r in ("r1", "r2", "r3") for n in (1, 2))]
    live += [placed(f"x{k}", "r1", "r1-n1", created_at=10 + k) for k in range(3)]
    for keep in range(9, -1, -1):
        gone = {i.id for i in _victims(live, 9 - keep)}
        left = Counter(i.rack for i in live if i.id not in gone)
        assert sum(left.values()) == keep
        if keep <= 6:           # from there on the racks can be level: they must be
            assert max(left.values(), default=0) - min(left.get(r, 0) for r in ("r1", "r2", "r3")) <= 1, left
        else:                   # the extra three on r1 go first
            assert left["r1"] == keep - 4


def test_spread_scale_in_from_six_to_three_leaves_one_per_rack():
    live = [placed(f"{r}-{n}", r, f"{r}-n{n}", created_at=k)
            for k, (r, n) in enumerate((r, n) for r in ("a", "b", "c") for n in (1, 2))]
    gone = {i.id for i in _victims(live, 3)}
    assert Counter(i.rack for i in live if i.id not in gone) == {"a": 1, "b": 1, "c": 1}
    assert Counter(i.node for i in live if i.id not in gone).most_common(1)[0][1] == 1


def test_state_still_beats_balance():
    live = [placed("a1", "a", "a-n1"), placed("a2", "a", "a-n1"), placed("a3", "a", "a-n2"),
            placed("b1", "b", "b-n1", state=InstanceState.FAILED)]
    assert [i.id for i in _victims(live, 2)][0] == "b1"


def test_pack_scale_in_empties_the_emptiest_node_first():
    live = [placed(f"p{k}", "r1", "full", created_at=k) for k in range(4)] + [placed("lone", "r1", "few", 9)]
    assert [i.id for i in _victims(live, 1, "pack")] == ["lone"]


def test_victims_of_a_large_group_stay_balanced():
    live = [placed(f"i{k}", f"r{k % 50}", f"n{k % 1000}", created_at=k) for k in range(10_000)]
    live += [placed(f"extra{k}", "r0", "n0", created_at=20_000 + k) for k in range(500)]
    gone = {i.id for i in _victims(live, 9_500)}
    assert len(gone) == 9_500
    left = Counter(i.rack for i in live if i.id not in gone)
    nodes = Counter(i.node for i in live if i.id not in gone)
    assert max(left.values()) - min(left.values()) <= 1 and max(nodes.values()) == 1


def test_locate_answer_round_trip_keeps_only_what_attaching_needs():
    from cowfleet.models import Replica
    from cowfleet.protocol import REPLICA_FIELDS, LocateAnswer, replica_location
    rep = Replica(node="s1", rack="r1", path="/m/img", sha256="ab" * 32, size_bytes=5,
                  portal="10.0.0.1:3260", target="iqn.x:img")
    loc = replica_location(rep.to_dict())
    assert tuple(loc) == REPLICA_FIELDS and loc["portal"] == "10.0.0.1:3260"
    answer = LocateAnswer(image="img", format="raw", sha256="ab" * 32, min_replicas=2, replicas=[loc],
                          answered_by="s1")
    wire = answer.to_dict()
    assert LocateAnswer.from_dict(dict(wire, extra="ignored")) == answer


def test_a_leader_reads_the_other_leaders_again_only_when_they_may_have_changed(monkeypatch):
    """Every leader read all racks' leaders every round before: O(racks^2)
    a round for the cluster, most of a settled 1,000-agent fleet's CPU."""
    from types import SimpleNamespace

    from cowfleet.agents import placement
    reads, leaders = [], {"r1": "a", "r2": "b"}

    def rack_leaders(zk, role):
        reads.append(role)
        return {r: SimpleNamespace(name=n) for r, n in leaders.items()}
    monkeypatch.setattr(placement, "rack_leaders", rack_leaders)
    placer = placement.Placer(zk=None, identifier="a")
    groups = [f"g{i}" for i in range(20)]
    mine = placer.my_share(groups)
    assert placer.my_share(groups) == mine and len(reads) == 1 and 0 < len(mine) < 20
    placer.forget_leaders()                    # the membership changed
    placer.my_share(groups)
    assert len(reads) == 2
    leaders["r1"] = "c"                        # this one no longer leads (it did not hear yet)
    placer.my_share(groups)
    assert len(reads) == 2                     # its list still has it: trusted until it expires
    placer.identifier = "d"                    # leads now, and is not in the list: read again
    leaders["r1"] = "d"
    assert placer.my_share(groups) and len(reads) == 3
    monkeypatch.setattr(placement, "LEADERS_SECONDS", 0.0)
    placer.my_share(groups)
    assert len(reads) == 4


def test_a_queued_request_whose_group_is_being_placed_is_not_claimed(monkeypatch):
    """A request older than the grace whose group's lock is held is still
    being placed: leaders leave it (at 1,000 agents ~100 of them claimed a
    10,000-instance request 5 s into its placement and queued on its lock)."""
    locks = {"web": ["_c_abc-lock-0000000001"], "db": []}
    zk = SimpleNamespace(get_children=lambda path: locks[path.rsplit("group-", 1)[1]])
    placer = pl.Placer(zk, "n1")
    ran = []
    monkeypatch.setattr(placer, "_locked", lambda group, fn, timeout=10: ran.append(group) or "placed")
    for group in ("web", "db"):
        monkeypatch.setattr(pl, "read", lambda zk, path, model, g=group: (DeployRequest(group=g, generation=1), 0))
        placer.handle("req-0000000001")
    assert ran == ["db"]
    monkeypatch.setattr(pl, "read", lambda zk, path, model: (DeployRequest(group="web", generation=1), 0))
    assert placer.handle("req-0000000001", via="hand-off") == "placed"     # the hand-off waits for the lock
