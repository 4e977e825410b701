"""ZooKeeper paths: all under /cowfleet, and assignment names round trip."""
from __future__ import annotations

import pytest

from cowfleet.zk import layout


def test_root():
    assert layout.ROOT == "/cowfleet"


def test_top_level_folders_are_under_root():
    assert len(set(layout.TOP_LEVEL)) == len(layout.TOP_LEVEL) == 12
    for path in layout.TOP_LEVEL:
        assert path.startswith("/cowfleet/")
        assert path.count("/") == (3 if path.startswith(layout.CONFIG) else 2), path


@pytest.mark.parametrize("path, expected", [
    (layout.image("demo"), "/cowfleet/images/demo"),
    (layout.image_replicas("demo"), "/cowfleet/images/demo/replicas"),
    (layout.image_replica("demo", "s1"), "/cowfleet/images/demo/replicas/s1"),
    (layout.flavor("small"), "/cowfleet/flavors/small"),
    (layout.group("web"), "/cowfleet/groups/web"),
    (layout.group_instances("web"), "/cowfleet/groups/web/instances"),
    (layout.group_instance("web", "web-abc123"), "/cowfleet/groups/web/instances/web-abc123"),
    (layout.group_status("web"), "/cowfleet/groups/web/status"),
    (layout.node("c1"), "/cowfleet/nodes/c1"),
    (layout.rack_leader("r1", "compute"), "/cowfleet/racks/r1/compute-leader"),
    (layout.request("req-0000000001"), "/cowfleet/requests/req-0000000001"),
    (layout.assignments("c1"), "/cowfleet/assignments/c1"),
    (layout.assignment("c1", "web", "web-abc123"), "/cowfleet/assignments/c1/web:web-abc123"),
    (layout.group_lock("web"), "/cowfleet/locks/group-web"),
    (layout.group_placement("web"), "/cowfleet/groups/web/placement"),
    (layout.REQUEST_PREFIX, "/cowfleet/requests/req-"),
])
def test_paths(path, expected):
    assert path == expected


def test_every_builder_is_under_root():
    builders = [layout.image("a"), layout.image_replicas("a"), layout.image_replica("a", "b"),
                layout.flavor("a"), layout.group("a"), layout.group_instances("a"),
                layout.group_instance("a", "b"), layout.group_status("a"), layout.node("a"),
                layout.rack_leader("a", "storage"), layout.request("a"), layout.assignments("a"),
                layout.assignment("a", "b", "c")]
    for p in builders:
        assert p.startswith(layout.ROOT + "/")
        assert "//" not in p


def test_group_status_is_not_an_instance_path():
    # the status znode must not live among the instance children
    assert not layout.group_status("web").startswith(layout.group_instances("web") + "/")


@pytest.mark.parametrize("group, iid", [("web", "web-0a1b2c"), ("a", "a-ffffff"),
                                         ("x-y-z", "x-y-z-000000"), ("g", "")])
def test_assignment_round_trip(group, iid):
    path = layout.assignment("node-1", group, iid)
    parent, _, child = path.rpartition("/")
    assert parent == layout.assignments("node-1")
    assert layout.parse_assignment(child) == (group, iid)


def test_parse_assignment_without_separator():
    assert layout.parse_assignment("web") == ("web", "")


def test_group_lock_round_trip():
    from cowfleet.zk import layout
    child = layout.group_lock("web-1").rsplit("/", 1)[1]
    assert layout.parse_group_lock(child) == "web-1"
    assert layout.parse_group_lock("other-thing") is None
