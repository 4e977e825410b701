"""The leaders' periodic sweep (agents/placement.Placer.reconcile_all)
against a real ZooKeeper: a settled group -- nothing to write, nothing to
wait for -- is read again only when what its decision depends on moved (the
group, its status, its instances' names, the members), or after
FULL_SWEEP_SECONDS; a group that still needs work is read every round."""
from __future__ import annotations

import pytest

from cowfleet.agents import placement
from cowfleet.agents.placement import Placer
from cowfleet.models import Group, GroupStatus, Instance, InstanceState, NodeInfo
from cowfleet.zk import layout

pytestmark = pytest.mark.integration


def _member(own_zk, name):
    own_zk.create(layout.node(name), NodeInfo(name=name, role="compute", rack="r1").to_bytes(), makepath=True)


def _group(own_zk, size, instances, **spec):
    own_zk.create(layout.group("web"), Group(name="web", image="tiny", flavor="small", size=size, **spec).to_bytes(),
              makepath=True)
    own_zk.create(layout.group_status("web"), GroupStatus(observed_generation=1).to_bytes())
    own_zk.ensure_path(layout.group_instances("web"))
    for iid, node, *image_state in instances:
        image, state = image_state or ("tiny", InstanceState.READY)
        own_zk.create(layout.group_instance("web", iid), Instance(
            id=iid, group="web", node=node, rack="r1", image=image, flavor="small", generation=1,
            state=state).to_bytes())
        own_zk.create(layout.assignment(node, "web", iid), b"run", makepath=True)


def _sweeps(own_zk, monkeypatch):
    """How many times each sweep read the group's instances."""
    reads = []
    real = placement.read_named
    monkeypatch.setattr(placement, "read_named", lambda *a: reads.append(1) or real(*a))
    placer = Placer(own_zk, "n1")

    def sweep():
        reads.clear()
        placer.reconcile_all()
        return len(reads)
    return sweep


def test_a_settled_group_is_read_again_only_when_what_it_depends_on_moved(own_zk, monkeypatch):
    for n in ("n1", "n2"):
        _member(own_zk, n)
    _group(own_zk, 2, [("web-a", "n1"), ("web-b", "n2")])
    sweep = _sweeps(own_zk, monkeypatch)
    assert sweep() == 1                 # placed as its status says: nothing to write, settled
    assert sweep() == 0
    inst = Instance.from_bytes(own_zk.get(layout.group_instance("web", "web-a"))[0])
    inst.message = "an agent's write"   # an instance's own data: not what a settled group depends on
    own_zk.set(layout.group_instance("web", "web-a"), inst.to_bytes())
    assert sweep() == 0
    _member(own_zk, "n3")                   # the members moved
    assert sweep() == 1
    assert sweep() == 0
    monkeypatch.setattr(placement, "FULL_SWEEP_SECONDS", 0.0)
    assert sweep() == 1                 # and at least every FULL_SWEEP_SECONDS
    monkeypatch.setattr(placement, "FULL_SWEEP_SECONDS", 60.0)
    assert sweep() == 0
    own_zk.delete(layout.node("n2"))        # a node gone: its instance is dropped, one to place again
    assert sweep() == 1
    assert "web-b" not in own_zk.get_children(layout.group_instances("web"))
    assert sweep() == 1                 # no room offered: still one to place, read every round


def test_a_group_waiting_for_capacity_is_read_every_round(own_zk, monkeypatch):
    _member(own_zk, "n1")
    _group(own_zk, 3, [("web-a", "n1")])    # room on no node (no agent offers): two unplaced
    sweep = _sweeps(own_zk, monkeypatch)
    assert [sweep() for _ in range(3)] == [1, 1, 1]


def test_a_rolling_update_waiting_for_readiness_is_read_every_round(own_zk, monkeypatch):
    """Nothing to write while the new instance starts (surge 1, none
    unavailable): the next step waits for its readiness, an instance's own
    data that moves no stat of the guard, so the group is read every round."""
    _member(own_zk, "n1")
    _group(own_zk, 1, [("web-old", "n1", "old", InstanceState.READY), ("web-new", "n1", "tiny", InstanceState.STARTING)],
           update_policy={"max_surge": 1, "max_unavailable": 0})
    sweep = _sweeps(own_zk, monkeypatch)
    assert [sweep() for _ in range(3)] == [1, 1, 1]
    new = Instance.from_bytes(own_zk.get(layout.group_instance("web", "web-new"))[0])
    new.state = InstanceState.READY
    own_zk.set(layout.group_instance("web", "web-new"), new.to_bytes())
    assert sweep() == 1
    old = Instance.from_bytes(own_zk.get(layout.group_instance("web", "web-old"))[0])
    assert old.state == InstanceState.TERMINATING      # the next step taken
