"""PUT /v1/flavors/{name}: a lost race is retried without If-Match and is a
412 "Precondition Failed" with it, like images (one shared loop: upsert)."""
from __future__ import annotations

import pytest

from cowfleet.models import Flavor
from cowfleet.service.flavors import service as flavors
from cowfleet.service.preconditions import Precondition
from cowfleet.service.problems import Problem
from cowfleet.zk import layout
from tests.unit.fake_zk import FakeZK

SPEC = {"vcpus": 1, "memory_mib": 128, "disk_gib": 1}


def stored(zk, name="f") -> tuple[Flavor, int]:
    data, stat = zk.get(layout.flavor(name))
    return Flavor.from_bytes(data), stat.version


def concurrent_writer(zk, memory_mib: int):
    def write(path):
        zk.set(path, Flavor(name="f", vcpus=1, memory_mib=memory_mib, disk_gib=1).to_bytes())
    return write


def test_create_then_confirm_then_update():
    zk = FakeZK()
    body, created = flavors.put(zk, "f", SPEC)
    assert created and body["etag"] == "0" and body["memory_mib"] == 128
    body, created = flavors.put(zk, "f", SPEC)
    assert not created and body["etag"] == "0" and zk.sets == 0
    body, created = flavors.put(zk, "f", dict(SPEC, memory_mib=256), Precondition.at(0))
    assert not created and body["etag"] == "1" and stored(zk)[0].memory_mib == 256


def test_lost_race_without_if_match_is_retried():
    zk = FakeZK({layout.flavor("f"): Flavor(name="f", **SPEC).to_bytes()})
    zk.before_set = concurrent_writer(zk, 192)
    body, created = flavors.put(zk, "f", dict(SPEC, memory_mib=256))
    assert not created and body["memory_mib"] == 256 and body["etag"] == "2"
    assert stored(zk) == (Flavor(name="f", vcpus=1, memory_mib=256, disk_gib=1), 2)


def test_lost_race_with_if_match_is_precondition_failed():
    zk = FakeZK({layout.flavor("f"): Flavor(name="f", **SPEC).to_bytes()})
    zk.before_set = concurrent_writer(zk, 192)
    with pytest.raises(Problem) as err:
        flavors.put(zk, "f", dict(SPEC, memory_mib=256), Precondition.at(0))
    assert (err.value.status, err.value.title) == (412, "Precondition Failed")
    assert stored(zk)[0].memory_mib == 192


@pytest.mark.parametrize("expected, exists", [(3, True), (0, False)])
def test_stale_or_missing_if_match(expected, exists):
    zk = FakeZK({layout.flavor("f"): Flavor(name="f", **SPEC).to_bytes()} if exists else {})
    with pytest.raises(Problem) as err:
        flavors.put(zk, "f", dict(SPEC, memory_mib=256), Precondition.at(expected))
    assert (err.value.status, err.value.title) == (412, "Precondition Failed")


def test_endless_races_end_in_503():
    zk = FakeZK({layout.flavor("f"): Flavor(name="f", **SPEC).to_bytes()})
    real_set = zk.set

    def always_lose(path, value, version=-1):
        real_set(path, zk.get(path)[0])          # someone else wrote first
        return real_set(path, value, version)
    zk.set = always_lose
    with pytest.raises(Problem) as err:
        flavors.put(zk, "f", dict(SPEC, memory_mib=256))
    assert err.value.status == 503
