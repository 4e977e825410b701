"""The choice of an image session and its repair (SessionManager.choose and
heal), against a table of where the replicas are: the policy without
daemons, ZooKeeper or storage nodes. The real manager runs the same code
(FakeSessionManager only keeps its sessions in memory); the integration
tests (test_streaming, test_storage_faults) run it with real ones."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cowfleet.agents.compute.sessions import FakeSessionManager, session_key
from cowfleet.protocol import LocateAnswer

SHA = "a" * 64


def replica(node: str) -> dict:
    return {"node": node, "rack": "r1", "portal": f"{node}:3260", "target": f"iqn.test:{node}"}


@dataclass
class Table:
    """sessions.Replicas: records and locate answers as the test sets them."""
    records: set[str] = field(default_factory=set)       # nodes with a replica record
    located: list[str] = field(default_factory=list)     # nodes the storage leaders name
    sha256: str = SHA
    used: set[str] = field(default_factory=set)          # session keys some overlay reads through
    answers: bool = True                                 # False: no storage leader answers
    asked: int = 0

    def recorded(self, session) -> bool:
        return session.node in self.records

    def locate(self, image: str) -> LocateAnswer | None:
        self.asked += 1
        if not self.answers:
            return None
        return LocateAnswer(image=image, format="raw", sha256=self.sha256, min_replicas=2,
                            replicas=[replica(n) for n in self.located])

    def in_use(self, key: str) -> bool:
        return key in self.used


@pytest.fixture
def sessions(tmp_path):
    return FakeSessionManager(tmp_path / "sessions")


def choose(sessions, table):
    return sessions.choose("img", SHA, "raw", table)


def test_the_first_instance_attaches_the_nearest_replica(sessions):
    c = choose(sessions, Table(records={"s1", "s2"}, located=["s1", "s2"]))
    assert (c.session.key, c.session.node, c.attached, c.wait) == (session_key("img", SHA), "s1", True, "")


def test_a_session_whose_node_has_its_record_is_kept_without_asking_the_leaders(sessions):
    first = choose(sessions, Table(located=["s1"])).session
    table = Table(records={"s1"}, located=["s2"])
    c = choose(sessions, table)
    assert (c.session, c.attached, table.asked) == (first, False, 0)


def test_a_missing_record_is_checked_with_the_leaders_before_the_session_goes(sessions):
    first = choose(sessions, Table(located=["s1"])).session
    c = choose(sessions, Table(records=set(), located=["s2", "s1"]))   # its record lags: still served
    assert (c.session, c.attached) == (first, False)


def test_a_used_session_whose_node_serves_no_more_stays_and_new_instances_get_the_next(sessions):
    first = choose(sessions, Table(located=["s1"])).session
    c = choose(sessions, Table(located=["s2"], used={first.key}))
    assert c.attached and c.session.node == "s2" and c.session.key == f"{first.key}~1"
    assert sessions.get(first.key) is not None, "the running instances' session was stopped"


def test_an_unused_session_whose_node_serves_no_more_is_made_again_on_another(sessions):
    first = choose(sessions, Table(located=["s1"])).session
    c = choose(sessions, Table(located=["s2"]))
    assert (c.session.key, c.session.node, c.attached) == (first.key, "s2", True)


def test_a_replica_of_other_bytes_serves_no_session_of_these(sessions):
    choose(sessions, Table(located=["s1"]))
    c = choose(sessions, Table(located=["s1"], sha256="b" * 64))
    assert (c.session, c.wait) == (None, "no-replica")


def test_no_replica_anywhere_waits(sessions):
    c = choose(sessions, Table())
    assert (c.session, c.attached, c.wait) == (None, False, "no-replica")


def test_an_attach_that_fails_says_why(sessions):
    table = Table(located=["s1"])
    table.locate = lambda image: LocateAnswer(image=image, format="raw", sha256=SHA, min_replicas=2,
                                              replicas=[{"node": "s1", "rack": "r1"}])   # no target
    c = choose(sessions, table)
    assert (c.session, c.wait) == (None, "attach-failed") and "iSCSI target" in c.error


def test_heal_leaves_an_unused_session_to_the_reconcile(sessions):
    key = choose(sessions, Table(located=["s1"])).session.key
    assert sessions.heal(key, Table(located=["s2"])).outcome == "unused"
    assert sessions.get(key).node == "s1"


def test_heal_keeps_a_session_still_served(sessions):
    key = choose(sessions, Table(located=["s1"])).session.key
    assert sessions.heal(key, Table(records={"s1"}, used={key})).outcome == "served"


def test_heal_moves_a_session_to_another_node_its_own_last(sessions):
    key = choose(sessions, Table(located=["s1"])).session.key
    h = sessions.heal(key, Table(located=["s2"], used={key}))       # s1 serves the image no more
    assert (h.outcome, h.session.key, h.session.node, h.was.node) == ("repointed", key, "s2", "s1")


def test_heal_of_a_dead_daemon_tries_another_node_before_its_own(sessions, monkeypatch):
    key = choose(sessions, Table(located=["s1"])).session.key
    monkeypatch.setattr(sessions, "get", lambda key: None)          # its daemon died; s1 still serves
    h = sessions.heal(key, Table(records={"s1"}, located=["s1", "s2"], used={key}))
    assert (h.outcome, h.session.node) == ("repointed", "s2")


def test_heal_with_no_replica_left_waits(sessions):
    key = choose(sessions, Table(located=["s1"])).session.key
    h = sessions.heal(key, Table(used={key}))
    assert (h.outcome, h.was.node) == ("no-replica", "s1")
    assert sessions.record(key) is not None, "the record to re-make it from is kept"


def test_heal_asks_the_leaders_once(sessions):
    key = choose(sessions, Table(located=["s1"])).session.key
    table = Table(used={key})                        # no record, and the leaders know no copy
    assert sessions.heal(key, table).outcome == "no-replica" and table.asked == 1


def test_heal_asks_the_leaders_once_when_none_answers(sessions):
    key = choose(sessions, Table(located=["s1"])).session.key
    table = Table(used={key}, answers=False)
    assert sessions.heal(key, table).outcome == "no-replica" and table.asked == 1


@pytest.mark.parametrize("answers", [True, False], ids=["no-copy", "no-answer"])
@pytest.mark.parametrize("used", [True, False], ids=["used", "unused"])
def test_choose_asks_the_leaders_at_most_once(sessions, answers, used):
    """A session whose node has no record is checked with the leaders; that
    answer (or its absence) decides the new session too: one locate a choice."""
    first = choose(sessions, Table(located=["s1"])).session
    table = Table(answers=answers, used={first.key} if used else set())
    c = choose(sessions, table)
    assert (c.session, c.wait, table.asked) == (None, "no-replica", 1)
    table = Table()                                  # no session: the one ask is the choice's own
    choose(sessions, table)
    assert table.asked == 1
