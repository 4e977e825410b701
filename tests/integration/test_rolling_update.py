"""Rolling updates -- image and flavor changes -- under several update
policies, checked on every transition of the group's instance records as
ZooKeeper's watches deliver them (tests/transitions.py), not sampled: once
the group was ready, it never holds fewer than ``size - max_unavailable``
ready instances nor more than ``size + max_surge`` live ones.

The tests share one group of 4 real guests (a boot under TCG costs tens of
seconds on 2 cores): each starts from the group ready, whatever it runs,
and changes it to what it does not run. Times are printed, not asserted.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from cowfleet.models import InstanceState
from tests.helpers import wait_until
from tests.transitions import GroupTransitions, Replay

pytestmark = pytest.mark.integration

GROUP = "roll"
SIZE = 4


def _ready(client, name: str):
    g = client.get_group(name)
    return g if g and g["status"]["phase"] == "ready" and len(g["instances"]) == SIZE else None


def _patch(client, name: str, changes: dict) -> dict:
    return client.request("PATCH", f"/v1/instance-groups/{name}", changes).json()


@pytest.fixture(scope="module")
def images(client, image_demo, demo_image):
    """demo-b: the demo guest under another name; broken: a disk of zeros,
    which no firmware boots (the guest never says it is ready)."""
    d = Path(tempfile.mkdtemp(prefix="cowfleet-roll-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    zeros = d / "zeros.raw"
    zeros.write_bytes(bytes(1 << 20))
    made = []
    try:
        for name, path in (("demo-b", demo_image), ("broken", zeros)):
            client.put_image(name, source_url=f"file://{path}", format="raw", min_replicas=1)
            made.append(name)
        for name in made:
            wait_until(lambda: client.get_image(name)["status"] == "available", 60, f"image {name}")
        yield
    finally:
        for name in made:
            client.delete_image(name)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def group(client, images):
    client.put_group(GROUP, image="demo", flavor="small", size=SIZE)
    try:
        yield GROUP
    finally:
        client.delete_group(GROUP)
        wait_until(lambda: client.get_group(GROUP) is None, 180, f"group {GROUP} gone")


def _steady(client, name: str) -> dict:
    """The group ready on a guest that boots (an earlier test may have failed mid-way)."""
    g = client.get_group(name)
    if g["image"] == "broken":
        _patch(client, name, {"image": "demo"})
    return wait_until(lambda: _ready(client, name), 150, f"group {name} ready")


def _wait(watcher: GroupTransitions, condition, timeout: float, what: str):
    """wait_until, and on a timeout the state of every instance as watched."""
    try:
        return wait_until(condition, timeout, what)
    except AssertionError as exc:
        view = sorted((s.instance, s.image, s.flavor, s.state) for s in watcher.current().values())
        raise AssertionError(f"{exc}; instances as watched: {view}") from None


def _watch(zk, name: str, ids: set[str]) -> tuple[GroupTransitions, int]:
    watcher = GroupTransitions(zk, name)
    wait_until(lambda: set(watcher.current()) == ids, 30, "the watcher holding every instance")
    return watcher, watcher.mark()


def _explain(replay: Replay) -> str:
    return "\n".join(replay.violations + [f"versions not seen: {replay.missed}"])


def _figures(label: str, took: float, replay: Replay) -> None:
    print(f"\n{label}: update {took:.1f} s; {replay.transitions} transitions; ready >= {replay.min_ready}, "
          f"live <= {replay.max_live}; versions not seen: {len(replay.missed)}")


def _roll(client, zk, name: str, changes: dict, policy: dict, label: str) -> tuple[Replay, dict, set[str]]:
    """Apply ``changes`` under ``policy`` and wait for the group ready on it;
    returns the replay of every transition, the group, and its ids before."""
    g = _steady(client, name)
    before = {i["id"] for i in g["instances"]}
    watcher, mark = _watch(zk, name, before)
    try:
        t0 = time.monotonic()
        changed = _patch(client, name, dict(changes, update_policy=policy))
        assert changed["status"]["phase"] != "ready", "old instances no longer count as ready"
        g = _wait(watcher, lambda: _ready(client, name), 220, f"group {name} ready after the update")
        took = time.monotonic() - t0
        _wait(watcher, lambda: not set(watcher.current()) & before, 30, "the old instances' records gone")
    finally:
        watcher.stop()
    replay = watcher.check(SIZE, policy["max_unavailable"], policy["max_surge"], after=mark)
    _figures(label, took, replay)
    assert not replay.violations, _explain(replay)
    assert all(g[k] == v for k, v in changes.items())
    assert {(i["state"], i["image"]) for i in g["instances"]} == {("ready", g["image"])}
    # (the API shows no instance's flavor: the records do)
    assert {(s.image, s.flavor) for s in replay.final.values()} == {(g["image"], g["flavor"])}
    assert len(replay.final) == SIZE
    assert not before & {i["id"] for i in g["instances"]}, "every instance was replaced"
    return replay, g, before


def _other_image(client, name: str) -> str:
    return "demo-b" if client.get_group(name)["image"] == "demo" else "demo"


def test_image_change_one_unavailable_no_surge(client, zk, group):
    policy = {"max_unavailable": 1, "max_surge": 0}
    _steady(client, group)
    replay, _, _ = _roll(client, zk, group, {"image": _other_image(client, group)}, policy, "size 4, 1/0")
    # the update used what the policy allows, and no more
    assert replay.min_ready == SIZE - 1 and replay.max_live == SIZE


def test_image_change_none_unavailable_one_surge(client, zk, group):
    policy = {"max_unavailable": 0, "max_surge": 1}
    _steady(client, group)
    replay, _, _ = _roll(client, zk, group, {"image": _other_image(client, group)}, policy, "size 4, 0/1")
    assert replay.min_ready == SIZE and replay.max_live == SIZE + 1


def test_flavor_change_rolls_the_same_way(client, zk, group):
    policy = {"max_unavailable": 1, "max_surge": 1}
    flavor = "medium" if _steady(client, group)["flavor"] == "small" else "small"
    replay, g, _ = _roll(client, zk, group, {"flavor": flavor}, policy, f"size 4, 1/1, flavor -> {flavor}")
    assert g["flavor"] == flavor
    assert replay.min_ready >= SIZE - 1 and replay.max_live == SIZE + 1


def test_a_new_image_that_never_boots_stops_the_update(client, zk, group):
    """The policy allows one ready instance away and one more live: the
    update retires one and starts two on the image that does not boot, then
    stops there -- the other three keep serving -- and says so. Back on the
    image that works, the new instances go first and the old three stay."""
    policy = {"max_unavailable": 1, "max_surge": 1}
    g = _steady(client, group)
    good = g["image"]
    before = {i["id"] for i in g["instances"]}
    watcher, mark = _watch(zk, group, before)
    try:
        t0 = time.monotonic()
        _patch(client, group, {"image": "broken", "update_policy": policy})

        def started_broken():
            return sum(s.image == "broken" and s.state == InstanceState.RUNNING
                       for s in watcher.current().values()) == 2
        _wait(watcher, started_broken, 120, "two instances running the broken image")
        t_stuck = time.monotonic() - t0
        # one more whole pass of the coordinator after that: a labels change is a
        # generation of its own, which it must observe
        generation = _patch(client, group, {"labels": {"rolled": "broken"}})["generation"]
        g = wait_until(lambda: (g := client.get_group(group))["status"]["observed_generation"] >= generation
                       and g, 60, "the coordinator to observe the labels change")
        live = [s for s in watcher.current().values() if s.state != InstanceState.TERMINATING]
        assert sorted(s.image for s in live) == ["broken", "broken", good, good, good], live
        assert sum(s.state == InstanceState.READY for s in live) == SIZE - 1
        # the group says the update is stuck, and on what
        assert g["status"]["phase"] == "provisioning"
        assert "rolling update to image 'broken'" in g["status"]["message"]
        assert "3 outdated instance(s) left" in g["status"]["message"]
        assert g["status"]["ready"] == 0 and g["status"]["running"] == SIZE + 1
        stuck = watcher.check(SIZE, 1, 1, after=mark)
        _figures(f"size 4, 1/1, broken image (stopped after {t_stuck:.1f} s)", t_stuck, stuck)
        assert not stuck.violations, _explain(stuck)
        assert stuck.min_ready == SIZE - 1 and stuck.max_live == SIZE + 1

        t1 = time.monotonic()
        _patch(client, group, {"image": good})
        g = _wait(watcher, lambda: _ready(client, group), 120, f"group {group} ready on {good} again")
        took = time.monotonic() - t1
        _wait(watcher, lambda: len(watcher.current()) == SIZE, 30, "the broken instances' records gone")
    finally:
        watcher.stop()
    back = watcher.check(SIZE, 1, 1, after=mark)
    _figures(f"size 4, 1/1, back to {good}", took, back)
    assert not back.violations, _explain(back)
    after = {i["id"] for i in g["instances"]}
    assert len(before & after) == SIZE - 1, "the three old instances stayed; only the retired one was replaced"
    assert {i["image"] for i in g["instances"]} == {good}
