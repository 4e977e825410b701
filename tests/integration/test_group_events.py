"""A group's events (issue 19, item 3): GET /v1/instance-groups/NAME/events
and ``cowfleet group events NAME [--follow]``; a capped list in ZooKeeper."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from cowfleet.client import ApiError
from cowfleet.models import Event
from cowfleet.zk import events, layout
from tests.conftest import chrooted
from tests.helpers import wait_until
from tests.integration.test_cli import ok

pytestmark = pytest.mark.integration


def reasons(client, name) -> list[str]:
    return [e["reason"] for e in client.group_events(name, limit=200)]


def test_events_are_capped_paged_by_cursor_and_go_with_the_group(lab, client, zk, image_demo, own_groups):
    own_groups.append("ev-cap")
    client.put_group("ev-cap", image="demo", flavor="small", size=0)
    extra = events.CAP + 2 * events.PRUNE_EVERY
    for n in range(extra):
        events.record(zk, "ev-cap", Event(reason="Test", message=f"event {n}", source="test"))
    kept = zk.get_children(layout.group_events("ev-cap"))
    assert events.CAP <= len(kept) <= events.CAP + events.PRUNE_EVERY, len(kept)
    # without a cursor: the newest, oldest first
    newest = client.group_events("ev-cap", limit=10)
    assert [e["message"] for e in newest] == [f"event {n}" for n in range(extra - 10, extra)]
    assert [e["id"] for e in newest] == sorted(e["id"] for e in newest)
    # with one: the next page, and a Link to the one after
    resp = client.request("GET", f"/v1/instance-groups/ev-cap/events?limit=5&after={newest[0]['id']}")
    page = resp.json()
    assert [e["message"] for e in page] == [f"event {n}" for n in range(extra - 9, extra - 4)]
    assert f"after={page[-1]['id']}" in resp.headers["Link"]
    # the last page has no Link
    last = client.request("GET", f"/v1/instance-groups/ev-cap/events?after={newest[-2]['id']}")
    assert [e["message"] for e in last.json()] == [f"event {extra - 1}"] and "Link" not in last.headers
    # bad parameters name themselves; unknown groups are 404; readers may read
    for query, field in (("limit=0", "limit"), ("limit=201", "limit"), ("after=x1", "after")):
        with pytest.raises(ApiError) as err:
            client.request("GET", f"/v1/instance-groups/ev-cap/events?{query}")
        assert err.value.status == 422 and field in err.value.problem["errors"], query
    assert client.group_events("ev-nothing") is None
    reader = requests.get(f"{lab.state.endpoint}/v1/instance-groups/ev-cap/events?limit=1", timeout=10,
                          headers={"Authorization": f"Bearer {lab.state.reader_token}"})
    assert reader.status_code == 200 and len(reader.json()) == 1
    # deleted: its events go in the same transaction
    client.delete_group("ev-cap")
    wait_until(lambda: client.get_group("ev-cap") is None, 60, "group ev-cap gone")
    assert not zk.exists(layout.group_events("ev-cap"))
    # a list left for a group that is gone (an event written while it was
    # removed) goes, events and all, with the leaders' sweep
    zk.create(f"{layout.group_events('ev-orphan')}/{layout.EVENT_PREFIX}", b"{}", sequence=True, makepath=True)
    assert events.forget_orphans(zk) >= 1
    assert not zk.exists(layout.group_events("ev-orphan"))


def test_writers_pruning_one_listing_delete_each_event_once(lab, request, monkeypatch):
    """Two writers that listed the events together: the first deletes the
    surplus in transactions of PRUNE_BATCH, the second stops at its first
    failed transaction instead of one failed delete per event (the herd of
    a 10,000-instance group's readiness threads: 42,000 failed deletes).
    Under a chroot of its own: in the lab's tree, a leader's round removes
    the event list of a group that does not exist (``forget_orphans``), and
    once did so in the middle of this test."""
    with chrooted(lab.state.zk, request.node.name) as zk:
        _two_writers(zk, monkeypatch)


def _two_writers(zk, monkeypatch) -> None:
    folder = layout.group_events("ev-herd")
    zk.ensure_path(folder)
    try:
        for _ in range(events.CAP + 40):
            zk.create(f"{folder}/{layout.EVENT_PREFIX}", b"{}", sequence=True)
        listing = sorted(zk.get_children(folder))
        monkeypatch.setattr(events, "PRUNE_BATCH", 16)
        made = []
        real = zk.transaction
        monkeypatch.setattr(zk, "transaction", lambda: made.append(1) or real())
        assert events.delete_oldest(zk, "ev-herd", listing) == 40 and len(made) == 3     # 16 + 16 + 8
        assert events.delete_oldest(zk, "ev-herd", listing) == 0 and len(made) == 4      # one failed, then stops
        assert sorted(zk.get_children(folder)) == listing[40:]
        assert events.prune(zk, "ev-herd") == 0                                           # at the cap already
    finally:
        zk.delete(folder, recursive=True)


def test_events_tell_what_happened_and_follow_shows_them_as_they_come(lab, cli, client, image_demo, own_groups):
    own_groups.append("ev-web")
    ok(cli("group", "create", "ev-web", "--image", "demo", "--size", "1", "--wait"))
    told = reasons(client, "ev-web")
    assert told[:2] == ["Created", "Placed"] and told.index("Started") < told.index("Ready"), told
    # --follow prints what comes, as it comes, and ends when the group is gone
    env = dict(os.environ, COWFLEET_ENDPOINT=lab.state.endpoint, COWFLEET_TOKEN=lab.state.token)
    follow = subprocess.Popen([sys.executable, "-m", "cowfleet.cli", "group", "events", "ev-web", "--follow",
                               "-o", "json", "--interval", "0.5"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        # one guest boot is enough (Started, Ready above): the second is only placed
        ok(cli("group", "scale", "ev-web", "2"))
        wait_until(lambda: reasons(client, "ev-web").count("Placed") == 2, 60, "the second placement's event")
        ok(cli("group", "update", "ev-web", "--label", "tier=web"))
        ok(cli("group", "scale", "ev-web", "1"))
        wait_until(lambda: "ScaledIn" in reasons(client, "ev-web"), 60, "the scale-in's event")
        told = reasons(client, "ev-web")
        after = told[told.index("Scaled"):]
        assert after[:2] == ["Scaled", "Placed"] and "Updated" in after, told
        assert after.index("Updated") < after.index("ScaledIn")
        scaled_in = next(e for e in client.group_events("ev-web") if e["reason"] == "ScaledIn")
        assert scaled_in["message"].startswith("removing 1 instance(s) beyond size 1")
        # the table, as a person reads it
        table = ok(cli("group", "events", "ev-web")).stdout
        assert table.splitlines()[0].split() == ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]
        assert "scaled from 1 to 2" in table
        ok(cli("group", "delete", "ev-web"))
        wait_until(lambda: client.get_group("ev-web") is None, 180, "group ev-web gone")
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert follow.returncode == 0, err
    seen = [json.loads(line) for line in out.splitlines()]
    ids = [e["id"] for e in seen]
    assert ids == sorted(set(ids)), "each event once, in order"
    followed = [e["reason"] for e in seen]
    assert followed[:2] == ["Created", "Placed"] and "ScaledIn" in followed, followed
    # the deletion asked; the leader's removal after it when the follow saw it before the group went
    assert "Deleting" in followed and followed.index("Deleting") > followed.index("ScaledIn"), followed
    assert "Terminating" not in followed or followed.index("Terminating") > followed.index("Deleting")
    assert "is gone" in err
