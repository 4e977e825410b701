"""Group events: what the writers say, and how the CLI prints them."""
from __future__ import annotations

from datetime import datetime, timezone

from cowfleet.agents.placement import _ids
from cowfleet.cli.common import age
from cowfleet.cli.groups import _follow_line, events_table
from cowfleet.models import Event, EventReason, Instance
from cowfleet.service.groups.service import spec_change

SPEC = {"image": "demo", "flavor": "small", "size": 2, "placement": {"strategy": "spread", "max_per_node": None},
        "user_data": None, "labels": {}, "update_policy": {"max_unavailable": 1, "max_surge": 1},
        "persistent": False, "ssh_authorized_keys": [], "ready_timeout": 900}


def test_a_size_change_alone_is_scaled():
    assert spec_change(SPEC, dict(SPEC, size=5)) == (EventReason.SCALED, "scaled from 2 to 5")


def test_other_changes_are_updated_quoting_the_values_that_matter():
    reason, message = spec_change(SPEC, dict(SPEC, image="demo2", size=3, labels={"a": "b"}))
    assert reason == EventReason.UPDATED
    assert message == "spec changed: image demo -> demo2, size 2 -> 3, labels"


def test_ids_are_capped_in_a_message():
    insts = [Instance(id=f"g-{n}", group="g", node="n", rack="r", image="i", flavor="f", generation=1)
             for n in range(8)]
    assert _ids(insts[:2]) == "g-0, g-1"
    assert _ids(insts) == "g-0, g-1, g-2, g-3, g-4 and 3 more"


def test_event_record_ignores_fields_it_does_not_know():
    e = Event(reason="Ready", message="guest ready", instance="g-1", node="n1", generation=2, source="n1")
    assert Event.from_bytes(e.to_bytes()[:-1] + b',"later":1}') == e


def test_ages_as_kubectl_prints_them():
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=timezone.utc)
    assert age("2026-12-02T11:59:18.000Z", now) == "42s"
    assert age("2026-12-02T11:58:01.000Z", now) == "119s"
    assert age("2026-12-02T11:57:00.000Z", now) == "3m"
    assert age("2026-12-02T09:00:00.000Z", now) == "3h"
    assert age("2026-11-28T12:00:00.000Z", now) == "4d"
    assert age(None, now) == "-"


def test_events_table_and_follow_lines():
    items = [{"id": "0000000001", "time": "2026-12-02T11:59:18.000Z", "type": "Normal", "reason": "Created",
              "message": "created: 1 x small of image demo", "instance": None, "node": None, "generation": 1,
              "source": "service"},
             {"id": "0000000002", "time": "2026-12-02T11:59:30.000Z", "type": "Warning", "reason": "Failed",
              "message": "ReadyTimeout: no readiness line", "instance": "g-abc", "node": "c1", "generation": 1,
              "source": "c1"}]
    lines = events_table(items, wide=False).splitlines()
    assert lines[0].split() == ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert "instance/g-abc" in lines[2] and lines[2].rstrip().endswith("ReadyTimeout: no readiness line")
    assert "SOURCE" in events_table(items, wide=True)
    assert events_table([], wide=False) == ""
    line = _follow_line(items[1])
    assert line.startswith("2026-12-02T11:59:30.000Z  Warning  Failed") and "instance/g-abc" in line
