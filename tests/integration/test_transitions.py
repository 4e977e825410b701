"""The rolling-update watcher (tests/transitions.py) against a real
ZooKeeper, with no agents: instance records written by hand. A violation
that lasts one write is caught; the same replacement done in the right
order, or in one transaction, is not flagged."""
from __future__ import annotations


import pytest

from cowfleet.models import Instance, InstanceState
from cowfleet.zk import layout
from cowfleet.zk.connection import connect
from tests.conftest import zookeeper_alone
from tests.helpers import wait_until
from tests.transitions import GONE, GroupTransitions

pytestmark = pytest.mark.integration

SIZE = 2


@pytest.fixture(scope="module")
def zk_alone():
    with zookeeper_alone("cowfleet-transitions-") as server:
        zk = connect(server.hosts + "/transitions")
        yield zk
        zk.stop()
        zk.close()


class Records:
    """A group's instance records, written as a coordinator and an agent
    would. Once a watcher is on, each write waits until the watcher has
    seen it: a watch re-reads the record it fires for, so writes to one
    record faster than that would show as one (tests/transitions.py)."""

    def __init__(self, zk, group: str):
        self.zk, self.group = zk, group
        self.watcher: GroupTransitions | None = None
        zk.ensure_path(layout.group_instances(group))

    def path(self, iid: str) -> str:
        return layout.group_instance(self.group, iid)

    def _seen(self, zxid: int) -> None:
        if self.watcher is not None:
            wait_until(lambda: self.watcher.mark() >= zxid, 10, f"the watcher seeing zxid {zxid}")

    def create(self, iid: str, image: str, state: str = InstanceState.PENDING, tx=None):
        inst = Instance(id=iid, group=self.group, node="n", rack="r", image=image, flavor="small",
                        generation=1, state=state)
        if tx is not None:
            tx.create(self.path(iid), inst.to_bytes())
            return
        _, stat = self.zk.create(self.path(iid), inst.to_bytes(), include_data=True)
        self._seen(stat.mzxid)

    def set(self, iid: str, state: str, tx=None):
        inst = Instance.from_bytes(self.zk.get(self.path(iid))[0])
        inst.state = state
        if tx is not None:
            tx.set_data(self.path(iid), inst.to_bytes())
            return
        self._seen(self.zk.set(self.path(iid), inst.to_bytes()).mzxid)

    def commit(self, tx, iid: str):
        assert not [r for r in tx.commit() if isinstance(r, Exception)]
        self._seen(self.zk.exists(self.path(iid)).mzxid)

    def delete(self, iid: str):
        self.zk.delete(self.path(iid))
        wait_until(lambda: iid not in self.watcher.current(), 10, f"the watcher seeing {iid} deleted")


def _ready_group(zk, name: str) -> tuple[Records, GroupTransitions, int]:
    rec = Records(zk, name)
    for i in range(SIZE):
        rec.create(f"old{i}", "a", InstanceState.READY)
    rec.watcher = GroupTransitions(zk, name)
    wait_until(lambda: len(rec.watcher.current()) == SIZE, 10, "the watcher holding both instances")
    return rec, rec.watcher, rec.watcher.mark()


def test_a_violation_lasting_one_write_is_caught(zk_alone):
    rec, watcher, mark = _ready_group(zk_alone, "bad")
    rec.create("new0", "b")
    rec.set("old0", InstanceState.TERMINATING)      # one ready instance away before new0 is ready:
    rec.set("new0", InstanceState.READY)            # with max_unavailable=0, wrong for one write
    rec.delete("old0")
    replay = watcher.check(SIZE, max_unavailable=0, max_surge=1, after=mark)
    watcher.stop()
    assert len(replay.violations) == 1 and "below size - max_unavailable" in replay.violations[0], replay
    assert replay.min_ready == SIZE - 1 and replay.max_live == SIZE + 1


def test_the_same_replacement_in_order_is_not_flagged(zk_alone):
    rec, watcher, mark = _ready_group(zk_alone, "good")
    rec.create("new0", "b")
    rec.set("new0", InstanceState.READY)
    rec.set("old0", InstanceState.TERMINATING)
    rec.delete("old0")
    # a coordinator's step is one transaction: retire one and add one at a single zxid
    tx = zk_alone.transaction()
    rec.set("old1", InstanceState.TERMINATING, tx)
    rec.create("new1", "b", tx=tx)
    rec.commit(tx, "new1")
    rec.set("new1", InstanceState.READY)
    rec.delete("old1")
    replay = watcher.check(SIZE, max_unavailable=1, max_surge=1, after=mark)
    watcher.stop()
    assert not replay.violations, replay
    assert replay.min_ready == SIZE - 1 and replay.max_live == SIZE + 1
    assert {s.image for s in replay.final.values()} == {"b"} and len(replay.final) == SIZE
    # every write was seen, in ZooKeeper's order (each record's versions in a row)
    assert not replay.missed
    assert [s.state for s in sorted(watcher.seen, key=lambda s: s.zxid) if s.instance == "old0"][-2:] == \
        [InstanceState.TERMINATING, GONE]


def test_a_record_deleted_while_ready_is_flagged(zk_alone):
    rec, watcher, mark = _ready_group(zk_alone, "drop")
    rec.delete("old0")
    replay = watcher.check(SIZE, max_unavailable=1, max_surge=0, after=mark)
    watcher.stop()
    assert any("deleted while ready" in v for v in replay.violations), replay
