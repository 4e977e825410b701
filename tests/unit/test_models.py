"""Records: JSON bytes round trip, tolerant reading, timestamps."""
from __future__ import annotations

import json

import pytest

from cowfleet.models import (DEFAULT_FLAVORS, DeployRequest, Flavor, Group, GroupStatus, Image,
                             Instance, InstanceState, NodeInfo, Replica, iso, now)


def sample_records():
    return [
        Image(name="demo", format="qcow2", min_replicas=3, source_url="file:///x",
              labels={"a": "b"}, size_bytes=123, sha256="ab" * 32, created_at=1700000000.5),
        Replica(node="s1", rack="r1", path="/var/lib/x.img", sha256="cd" * 32, size_bytes=9,
                created_at=1.25),
        Flavor("tiny", vcpus=1, memory_mib=64, disk_gib=1),
        Group(name="web", image="demo", flavor="small", size=4,
              placement={"strategy": "pack", "max_per_node": 2}, user_data="#!/bin/sh\n",
              labels={"x": "y"}, generation=7, deleting=True, created_at=2.0),
        GroupStatus(observed_generation=3, unplaced=1, message="no room"),
        Instance(id="web-aaaaaa", group="web", node="c1", rack="r1", image="demo", flavor="small",
                 generation=2, state=InstanceState.READY, address="10.0.0.2", message="ok",
                 created_at=1.0, running_at=2.0, ready_at=3.0),
        NodeInfo(name="c1", role="compute", rack="r1", address="http://c1:1",
                 capacity={"vcpus": 4, "memory_mib": 4096}, allocated={"vcpus": 1},
                 healthy=False, last_seen=5.0, virt_type="kvm"),
        DeployRequest(group="web", generation=3, created_at=4.0),
    ]


@pytest.mark.parametrize("record", sample_records(), ids=lambda r: type(r).__name__)
def test_round_trip(record):
    data = record.to_bytes()
    assert isinstance(data, bytes)
    back = type(record).from_bytes(data)
    assert back == record
    assert back is not record


def test_to_bytes_is_compact_sorted_json():
    data = Flavor("f", vcpus=2, memory_mib=256, disk_gib=3).to_bytes()
    assert data == b'{"disk_gib":3,"memory_mib":256,"name":"f","vcpus":2}'


def test_to_bytes_is_deterministic():
    a = Image(name="x", labels={"b": "1", "a": "2"}, created_at=1.0)
    b = Image(name="x", labels={"a": "2", "b": "1"}, created_at=1.0)
    assert a.to_bytes() == b.to_bytes()


def test_from_bytes_ignores_unknown_keys():
    raw = json.dumps({"name": "f", "vcpus": 1, "memory_mib": 2, "disk_gib": 3,
                      "added_by_a_newer_writer": {"x": 1}}).encode()
    assert Flavor.from_bytes(raw) == Flavor("f", 1, 2, 3)


def test_from_bytes_uses_defaults_for_missing_optional_keys():
    img = Image.from_bytes(b'{"name": "demo", "created_at": 1.0}')
    assert img == Image(name="demo", created_at=1.0)
    assert img.format == "raw" and img.min_replicas == 2 and img.labels == {}


def test_from_bytes_empty_gives_all_defaults():
    assert GroupStatus.from_bytes(b"") == GroupStatus()


def test_from_bytes_missing_required_key_fails():
    with pytest.raises(TypeError):
        Flavor.from_bytes(b'{"name": "f"}')


def test_class_vars_are_not_serialised():
    d = json.loads(Image(name="x").to_bytes())
    assert "IMMUTABLE" not in d
    d = json.loads(Group(name="g", image="i", flavor="f", size=1).to_bytes())
    assert "SPEC_FIELDS" not in d


def test_group_defaults_match_schema_defaults():
    g = Group(name="g", image="i", flavor="f", size=1)
    assert g.placement == {"strategy": "spread", "max_per_node": None}
    assert g.update_policy == {"max_unavailable": 1, "max_surge": 1}
    assert set(g.spec()) == set(Group.SPEC_FIELDS)
    g2 = Group(name="h", image="i", flavor="f", size=1)
    g.placement["strategy"] = "pack"
    assert g2.placement["strategy"] == "spread"


def test_default_flavors():
    names = [f.name for f in DEFAULT_FLAVORS]
    assert names == ["small", "medium", "large"]
    for f in DEFAULT_FLAVORS:
        assert f.vcpus >= 1 and f.memory_mib >= 64


def test_live_states_exclude_failed_and_terminating():
    assert InstanceState.FAILED not in InstanceState.LIVE
    assert InstanceState.TERMINATING not in InstanceState.LIVE
    assert set(InstanceState.LIVE) < set(InstanceState.ALL)


# --- iso() ------------------------------------------------------------------------

def test_iso_none():
    assert iso(None) is None


@pytest.mark.parametrize("ts, expected", [
    (0, "1970-01-01T00:00:00.000Z"),
    (0.5, "1970-01-01T00:00:00.500Z"),
    (1700000000.123, "2023-11-14T22:13:20.123Z"),
    (1700000000.999, "2023-11-14T22:13:20.999Z"),
    (1700000000.001, "2023-11-14T22:13:20.001Z"),
    (1709164800, "2024-02-29T00:00:00.000Z"),
    (4102444799.5, "2099-12-31T23:59:59.500Z"),
])
def test_iso_format(ts, expected):
    assert iso(ts) == expected


def test_iso_of_now_has_millisecond_precision():
    ts = now()
    text = iso(ts)
    assert len(text) == len("2023-11-14T22:13:20.123Z")
    assert text.endswith("Z")
    assert int(text[-4:-1]) == round(ts * 1000) % 1000


def test_iso_small_timestamps_keep_their_milliseconds():
    assert iso(1.001) == "1970-01-01T00:00:01.001Z"
