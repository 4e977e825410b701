"""The storage agent's policy parts, without I/O: when this node copies,
backs off, keeps or drops a copy (replication.py), how its targets follow
its copies and its exporter's health (exports.py), and how the locate
fan-out shapes its answers (locate.py)."""
from __future__ import annotations

from cowfleet.agents.storage import exports, locate, replication
from cowfleet.agents.storage.replication import DEFER_SECONDS, RETRY_MAX, RETRY_MIN, Replication
from cowfleet.models import Image, NodeInfo, Replica
from cowfleet.protocol import REPLICA_FIELDS

SHA = "ab" * 32
OTHER = "cd" * 32


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _image(name="img", min_replicas=2, created_at=1.5, **kw) -> Image:
    return Image(name=name, min_replicas=min_replicas, created_at=created_at, **kw)


def _node(name, rack):
    return NodeInfo(name=name, role="storage", rack=rack)


def _replica(node, rack):
    return Replica(node=node, rack=rack, path="/x", sha256=SHA, size_bytes=1)


STORAGE = [_node("a1", "a"), _node("a2", "a"), _node("b1", "b")]


# -- replication ----------------------------------------------------------------

def test_a_chosen_copier_copies_at_once_the_others_after_the_deferral():
    image = _image(min_replicas=2)
    replicas = [_replica("a1", "a")]
    assert replication.copiers("img", 2, replicas, STORAGE) == ["b1"]    # the rack without a copy
    clock = Clock()
    assert Replication("b1", clock).should_copy(image, replicas, STORAGE)
    other = Replication("a2", clock)
    assert not other.should_copy(image, replicas, STORAGE)
    clock.t += DEFER_SECONDS
    assert not other.should_copy(image, replicas, STORAGE)               # not yet: 30 s, not more
    clock.t += 0.1
    assert other.should_copy(image, replicas, STORAGE)
    other.enough("img")                                                  # it got its replicas
    assert not other.should_copy(image, replicas, STORAGE)              # a new shortage starts the wait anew


def test_a_failed_copy_backs_off_doubling_to_the_cap_and_per_image_record():
    clock = Clock()
    rep = Replication("a1", clock)
    image = _image()
    assert not rep.backing_off(image)
    waits = [rep.failed(image) for _ in range(7)]
    assert waits == [RETRY_MIN, 20.0, 40.0, 80.0, 160.0, RETRY_MAX, RETRY_MAX]
    assert rep.backing_off(image)
    assert not rep.backing_off(_image(created_at=2.5))   # the name made anew starts afresh
    clock.t += RETRY_MAX
    assert not rep.backing_off(image)
    rep.failed(image)
    rep.succeeded(image)
    assert not rep.backing_off(image) and rep.failed(image) == RETRY_MIN
    rep.forget_except({"other"})                          # the image is gone: so is its backoff
    assert rep.retry_at == {}


def test_a_copy_on_disk_counts_only_for_the_record_it_was_made_for():
    image = _image(sha256=SHA)
    mine = replication.origin(image)
    assert replication.verdict(image, SHA, mine) == replication.KEEP
    assert replication.verdict(image, SHA, replication.origin(_image(created_at=0.5))) == replication.DROP_EARLIER
    # an older sidecar without origin: kept (and taught its origin) only with the record's bytes
    assert replication.verdict(image, SHA, None) == replication.LEARN_ORIGIN
    assert replication.verdict(image, OTHER, None) == replication.DROP_UNKNOWN
    assert replication.verdict(_image(), SHA, None) == replication.DROP_UNKNOWN    # record without data yet


def test_where_a_copy_comes_from():
    members = lambda: ["a1", "a2"]     # noqa: E731
    assert replication.copy_from(_image(source_url="file:///m.raw", sha256=SHA), ["a1"], members) == []
    assert replication.copy_from(_image(sha256=SHA), ["b1"], members) == ["b1"]
    assert replication.copy_from(_image(sha256=SHA), [], members) == ["a1", "a2"]

    def unread():
        raise AssertionError("members read though not needed")
    assert replication.copy_from(_image(), [], unread) is None       # no upload yet: nothing to copy
    assert replication.copy_from(_image(source_url="http://x/m", sha256=SHA), [], unread) == []


# -- exports --------------------------------------------------------------------

def test_targets_follow_the_copies():
    have = {"iqn:a": ["/m/a.img"], "iqn:b": ["/m/old-b.img"], "iqn:gone": ["/m/gone.img"]}
    wanted = {"iqn:a": "/m/a.img", "iqn:b": "/m/b.img", "iqn:new": "/m/new.img"}
    remove, export = exports.plan_targets(have, wanted)
    assert remove == ["iqn:gone"]
    assert export == {"iqn:b": "/m/b.img", "iqn:new": "/m/new.img"}    # a is exported already
    assert exports.plan_targets(have, {}) == (list(have), {})


def test_one_slow_answer_is_not_a_dead_exporter():
    health = exports.ExporterHealth()
    assert health.answered() == exports.ANSWERS
    assert health.failed() == exports.SLOW and not health.down
    assert health.answered() == exports.ANSWERS                          # the count starts again
    assert health.failed() == exports.SLOW
    assert health.failed() == exports.WENT_DOWN and health.down
    assert health.failed() == exports.STILL_DOWN
    assert health.answered() == exports.BACK and not health.down
    assert health.answered() == exports.ANSWERS


# -- locate ---------------------------------------------------------------------

def _holder(node, rack, sha=SHA):
    return locate.holds_answer(node, rack, {"portal": f"{node}:3260", "target": f"iqn:{node}", "sha256": sha,
                                            "size_bytes": 7})


def test_holds_answers():
    assert locate.holds_answer("a1", "a", None) == {"node": "a1", "rack": "a", "holds": False}
    assert _holder("a1", "a") == {"node": "a1", "rack": "a", "holds": True, "portal": "a1:3260",
                                  "target": "iqn:a1", "sha256": SHA, "size_bytes": 7}


def test_a_rack_answer_keeps_holders_and_names_who_could_not_answer():
    answer = locate.rack_answer("a", "a1", {"a1": _holder("a1", "a"), "a2": locate.holds_answer("a2", "a", None),
                                            "a3": TimeoutError("slow"), "a4": ["not", "an", "answer"]})
    assert answer == {"rack": "a", "leader": "a1", "holders": [_holder("a1", "a")],
                      "errors": {"a3": "TimeoutError", "a4": "AttributeError"}}


def test_locate_answer_drops_other_bytes_and_puts_the_askers_rack_first():
    image = _image(sha256=SHA, format="raw", min_replicas=2)
    answers = [{"rack": "a", "leader": "a1", "holders": [_holder("a1", "a"), _holder("a2", "a", OTHER)],
                "errors": {}, "ms": 1.0},
               {"rack": "b", "leader": "b1", "holders": [_holder("b1", "b"), _holder("b2", "b")],
                "errors": {"b3": "ConnectionError"}, "ms": 2.0},
               {"rack": "c", "leader": "c1", "holders": [], "error": "ConnectTimeout: x", "ms": 3000.0}]
    got = locate.locate_answer(image, answers, near="b", spread="compute-7", answered_by="a1")
    assert [r["node"] for r in got["replicas"]][2:] == ["a1"]            # the asker's rack first
    assert {r["node"] for r in got["replicas"][:2]} == {"b1", "b2"}      # a2 holds other bytes: left out
    assert got["replicas"][0] == {k: v for k, v in got["replicas"][0].items() if k in REPLICA_FIELDS}
    assert set(got["replicas"][0]) == set(REPLICA_FIELDS)
    assert got["racks"] == {"a": {"leader": "a1", "ms": 1.0, "errors": {}},
                            "b": {"leader": "b1", "ms": 2.0, "errors": {"b3": "ConnectionError"}},
                            "c": {"leader": "c1", "ms": 3000.0, "error": "ConnectTimeout: x"}}
    assert {k: got[k] for k in ("image", "format", "sha256", "min_replicas", "answered_by")} == \
        {"image": "img", "format": "raw", "sha256": SHA, "min_replicas": 2, "answered_by": "a1"}
    # the order within a rack is spread per asking node, and the same for the same asker
    orders = {tuple(r["node"] for r in locate.locate_answer(image, answers, "b", f"compute-{i}", "a1")["replicas"])
              for i in range(20)}
    assert len(orders) == 2
    assert locate.locate_answer(image, answers, "b", "compute-7", "a1") == got
