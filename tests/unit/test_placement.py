"""Node choice for new instances, and which instances go on scale-in."""
from __future__ import annotations

from collections import Counter

import pytest

from cowfleet.agents.placement import NodeLoad, _victims, assignment_data, choose_nodes, \
    parse_assignment_data
from cowfleet.models import Flavor, Instance, InstanceState, NodeInfo

SMALL = Flavor("small", vcpus=1, memory_mib=128, disk_gib=1)
LARGE = Flavor("large", vcpus=2, memory_mib=512, disk_gib=10)


def loads(*caps, **kw) -> dict[str, NodeLoad]:
    """loads((vcpus, mem), ...) -> nodes n1, n2, ... with that capacity."""
    out = {}
    for i, (vcpus, mem) in enumerate(caps, start=1):
        name = f"n{i}"
        out[name] = NodeLoad(NodeInfo(name=name, role="compute", rack="r1",
                                      capacity={"vcpus": vcpus, "memory_mib": mem}))
    return out


def names(nodes) -> list[str]:
    return [n.name for n in nodes]


def check_capacity(ls: dict[str, NodeLoad]):
    for load in ls.values():
        assert load.vcpus <= load.node.capacity.get("vcpus", 0)
        assert load.memory_mib <= load.node.capacity.get("memory_mib", 0)


@pytest.mark.parametrize("count, n_nodes", [(1, 3), (3, 3), (7, 3), (10, 4), (13, 5), (2, 5)])
def test_spread_balances_within_one(count, n_nodes):
    ls = loads(*[(64, 65536)] * n_nodes)
    chosen = choose_nodes(count, SMALL, ls, "spread", None)
    assert len(chosen) == count
    per = Counter(names(chosen))
    counts = [per.get(f"n{i}", 0) for i in range(1, n_nodes + 1)]
    assert max(counts) - min(counts) <= 1, counts


def test_spread_takes_existing_instances_of_the_group_into_account():
    ls = loads((64, 65536), (64, 65536), (64, 65536))
    ls["n1"].of_group = 3
    ls["n2"].of_group = 1
    chosen = choose_nodes(4, SMALL, ls, "spread", None)
    per = Counter(names(chosen))
    assert per == {"n3": 2, "n2": 2}
    assert [l.of_group for l in ls.values()] == [3, 3, 2]


def test_spread_prefers_the_less_used_node_on_a_tie():
    ls = loads((8, 4096), (8, 4096))
    ls["n1"].memory_mib = 2048
    ls["n1"].vcpus = 2
    assert names(choose_nodes(1, SMALL, ls, "spread", None)) == ["n2"]


def test_pack_fills_one_node_before_the_next():
    ls = loads((4, 65536), (4, 65536), (4, 65536))
    chosen = names(choose_nodes(10, SMALL, ls, "pack", None))
    assert len(chosen) == 10
    # consecutive runs: each node is used in one block of 4 (its vCPU capacity)
    blocks = [chosen[i:i + 4] for i in range(0, 10, 4)]
    assert all(len(set(b)) == 1 for b in blocks), chosen
    assert len({b[0] for b in blocks}) == 3
    assert Counter(chosen)[blocks[0][0]] == 4
    check_capacity(ls)


def test_pack_prefers_the_most_used_node():
    ls = loads((8, 4096), (8, 4096), (8, 4096))
    ls["n2"].memory_mib = 1024
    ls["n2"].vcpus = 1
    assert names(choose_nodes(3, SMALL, ls, "pack", None)) == ["n2"] * 3


def test_pack_skips_a_full_node():
    ls = loads((8, 4096), (8, 4096))
    ls["n1"].memory_mib = 4096 - 100   # most used, but no room
    assert names(choose_nodes(2, SMALL, ls, "pack", None)) == ["n2", "n2"]


@pytest.mark.parametrize("strategy", ["spread", "pack"])
@pytest.mark.parametrize("max_per_node", [1, 2, 3])
def test_max_per_node_respected(strategy, max_per_node):
    ls = loads(*[(64, 65536)] * 3)
    chosen = choose_nodes(20, SMALL, ls, strategy, max_per_node)
    per = Counter(names(chosen))
    assert len(chosen) == 3 * max_per_node
    assert all(v == max_per_node for v in per.values())
    assert len(per) == 3


def test_max_per_node_counts_existing_instances():
    ls = loads((64, 65536), (64, 65536))
    ls["n1"].of_group = 2
    assert names(choose_nodes(5, SMALL, ls, "pack", 2)) == ["n2", "n2"]


@pytest.mark.parametrize("strategy", ["spread", "pack"])
@pytest.mark.parametrize("flavor", [SMALL, LARGE], ids=["small", "large"])
def test_capacity_never_exceeded(strategy, flavor):
    ls = loads((3, 65536), (64, 600), (5, 1100), (0, 0), (2, 511))
    chosen = choose_nodes(100, flavor, ls, strategy, None)
    check_capacity(ls)
    per = Counter(names(chosen))
    if flavor is SMALL:
        # n1: 3 vCPU; n2: 600 MiB -> 4; n3: min(5, 8) = 5; n4 nothing; n5: min(2, 3) = 2
        assert per == {"n1": 3, "n2": 4, "n3": 5, "n5": 2}
    else:
        # n1: 1 (2 of 3 vCPU); n2: 1 (512 of 600 MiB); n3: min(2, 2) = 2; n5: 511 MiB < 512
        assert per == {"n1": 1, "n2": 1, "n3": 2}


def test_existing_load_from_other_groups_counts_against_capacity():
    ls = loads((4, 1024))
    ls["n1"].vcpus = 3
    ls["n1"].memory_mib = 100
    assert len(choose_nodes(5, SMALL, ls, "spread", None)) == 1
    check_capacity(ls)


@pytest.mark.parametrize("strategy", ["spread", "pack"])
def test_fewer_nodes_when_capacity_runs_out(strategy):
    ls = loads((2, 65536), (1, 65536))
    chosen = choose_nodes(5, SMALL, ls, strategy, None)
    assert len(chosen) == 3
    assert Counter(names(chosen)) == {"n1": 2, "n2": 1}


def test_no_nodes_or_zero_count():
    assert choose_nodes(3, SMALL, {}, "spread", None) == []
    assert choose_nodes(0, SMALL, loads((4, 4096)), "spread", None) == []


def test_node_without_capacity_never_fits():
    ls = {"x": NodeLoad(NodeInfo(name="x", role="compute", rack="r"))}
    assert choose_nodes(1, SMALL, ls, "spread", None) == []


def test_choose_nodes_updates_loads():
    ls = loads((8, 4096))
    choose_nodes(3, LARGE, ls, "spread", None)
    assert (ls["n1"].vcpus, ls["n1"].memory_mib, ls["n1"].of_group) == (6, 1536, 3)


def test_fits_is_inclusive_at_capacity():
    load = loads((1, 128))["n1"]
    assert load.fits(SMALL)
    load.take(SMALL)
    assert not load.fits(SMALL)


def test_assignment_data_round_trip():
    data = assignment_data("run", LARGE)
    assert parse_assignment_data(data) == {"desired": "run", "vcpus": 2, "memory_mib": 512}
    assert parse_assignment_data(b"") == {}
    assert parse_assignment_data(b"not json") == {}


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
