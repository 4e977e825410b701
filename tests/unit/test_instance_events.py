"""A compute agent's Started and Ready events, merged in bursts
(agents/compute/instance_events.py)."""
from __future__ import annotations

import threading

from cowfleet.agents.compute.instance_events import InstanceEvents, merged
from cowfleet.models import Event, EventReason, EventType
from tests.helpers import wait_until


def ev(reason: str, iid: str, gen: int = 1, type: str = EventType.NORMAL, at: float = 0.0) -> Event:
    return Event(reason=reason, message=f"{reason} {iid}", type=type, instance=iid, node="n1", generation=gen,
                 source="n1", time=at)


class Written:
    def __init__(self):
        self.events: list[tuple[str, Event]] = []
        self.lock = threading.Lock()

    def __call__(self, group, event):
        with self.lock:
            self.events.append((group, event))


def test_the_first_goes_at_once_and_a_burst_after_it_as_one_event_per_group_and_reason():
    written = Written()
    box = InstanceEvents(written, window=60)          # the window ends by hand below
    box.add("web", ev(EventReason.STARTED, "web-first"))
    assert [e.instance for _, e in written.events] == ["web-first"]       # a quiet spell: at once, as it is
    for i in range(12):
        box.add("web", ev(EventReason.STARTED, f"web-{i:02d}", gen=1 + i % 2, at=100.0 + i))
    box.add("db", ev(EventReason.STARTED, "db-00"))
    box.add("web", ev(EventReason.READY, "web-00"))
    box.add("web", ev(EventReason.READY, "web-01"))
    assert len(written.events) == 1                   # held
    box.flush()
    assert [(g, e.reason) for g, e in written.events[1:]] == [("web", "Started"), ("db", "Started"),
                                                              ("web", "Ready")]
    started = written.events[1][1]
    assert started.instance is None and started.node == "n1" and started.generation == 2 and started.time == 100.0
    assert started.message == "12 domains started on n1: web-00, web-01, web-02, web-03, web-04 and 7 more"
    assert written.events[2][1] == ev(EventReason.STARTED, "db-00")      # alone: as it was
    assert written.events[3][1].message == "2 guests ready on n1: web-00, web-01"
    box.flush()
    assert len(written.events) == 4                   # nothing written twice


def test_the_window_writes_what_it_held_and_closes_when_nothing_came():
    written = Written()
    box = InstanceEvents(written, window=0.2)
    box.add("web", ev(EventReason.STARTED, "web-00"))
    box.add("web", ev(EventReason.STARTED, "web-01"))
    box.add("web", ev(EventReason.STARTED, "web-02"))
    assert len(written.events) == 1
    wait_until(lambda: len(written.events) == 2, 10, "the held events written when the window ends")
    assert written.events[1][1].message == "2 domains started on n1: web-01, web-02"
    # the window stayed open after writing a batch, then closed with nothing
    # held: the next event, after a quiet spell, goes at once again
    wait_until(lambda: box._timer is None, 10, "the window closed")
    box.add("web", ev(EventReason.READY, "web-00"))
    assert [e.instance for _, e in written.events] == ["web-00", None, "web-00"]


def test_a_warning_goes_at_once_after_what_is_held():
    """An instance's Started still comes before its Failed."""
    written = Written()
    box = InstanceEvents(written, window=60)
    box.add("web", ev(EventReason.STARTED, "web-00"))
    box.add("web", ev(EventReason.STARTED, "web-01"))          # held
    box.add("web", ev(EventReason.FAILED, "web-01", type=EventType.WARNING))
    assert [(e.reason, e.instance) for _, e in written.events] == [
        ("Started", "web-00"), ("Started", "web-01"), ("Failed", "web-01")]
    box.add("web", ev(EventReason.WAITING, "web-02", type=EventType.WARNING))
    assert [e.reason for _, e in written.events] == ["Started", "Started", "Failed", "Waiting"]


def test_merged_of_one_is_the_event_itself():
    one = ev(EventReason.READY, "web-00")
    assert merged([one]) is one
