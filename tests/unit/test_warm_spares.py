"""How many warm spares a compute agent keeps (ComputeAgent._keep_spares)
and the pool's own book-keeping (SparePool, on the fake hypervisor): spares
live only in capacity no running instance holds, an instance still to
start does not count (it may claim one), stale templates keep none, and a
spare is made only while the node is idle."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from cowfleet.agents.compute.agent import SPARE, ComputeAgent
from cowfleet.agents.compute.domain import DomainSpec
from cowfleet.agents.compute.hypervisor import DomainInfo, FakeHypervisor, domain_name
from cowfleet.agents.compute.overlays import FakeOverlayStore
from cowfleet.agents.compute.spares import PLACEHOLDER_BYTES, SparePool
from cowfleet.agents.compute.templates import TemplateStore
from cowfleet.protocol import DESIRED_RUN, Assignment


def template(root: Path, key: str, vcpus: int = 1, memory_mib: int = 256) -> None:
    folder = root / key
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"key": key, "session": "s", "vcpus": vcpus,
                                                  "memory_mib": memory_mib}))
    (folder / "memory.save").write_text("")


class Pool:
    """The SparePool calls _keep_spares makes."""

    def __init__(self, have: dict[str, int], per_template: int = 2):
        self.have, self.per_template, self.kept = have, per_template, None

    def count(self):
        return dict(self.have)

    def trim(self, keep):
        self.kept = keep
        return []


def agent(tmp_path: Path, have: dict[str, int], busy: bool = False, current=lambda t: True):
    store = TemplateStore(tmp_path / "templates", FakeHypervisor(), "n1", FakeOverlayStore.layer)
    for key in ("a", "b"):
        template(store.root, key)
    submitted = []
    me = SimpleNamespace(
        spares=Pool(have), templates=store, current=current, _vcpus=4, _memory=4096,
        spare_failures={}, log=SimpleNamespace(info=lambda *a: None), _make_spare="make",
        inflight={"i9": "_start"} if busy else {}, inflight_lock=threading.Lock(), awaiting={},
        awaiting_lock=threading.Lock(), _submit=lambda key, fn, *args: submitted.append((key, args)))
    me._idle = lambda: ComputeAgent._idle(me)
    return me, submitted


def running(n: int) -> dict:
    return {f"i{k}": ("g", f"g:i{k}", Assignment(desired=DESIRED_RUN, vcpus=1, memory_mib=256)) for k in range(n)}


def test_spares_fill_only_what_running_instances_leave(tmp_path):
    me, submitted = agent(tmp_path, {"a": 2, "b": 1})
    desired = running(3)
    ComputeAgent._keep_spares(me, desired, {iid: object() for iid in desired}, me.current)
    assert me.spares.kept == {"a": 1, "b": 0}, "4 vCPUs, 3 held by running instances: one spare"
    assert submitted == []


def test_instances_still_to_start_do_not_push_out_the_spares_they_may_claim(tmp_path):
    me, submitted = agent(tmp_path, {"a": 2, "b": 1})
    ComputeAgent._keep_spares(me, running(3), {}, me.current)
    assert me.spares.kept == {"a": 2, "b": 2}
    assert submitted == [(SPARE, ("b",))], "the short template's spare, made now: the node is idle"


def test_a_busy_node_makes_none_and_a_stale_template_keeps_none(tmp_path):
    me, submitted = agent(tmp_path, {}, busy=True)
    ComputeAgent._keep_spares(me, {}, {}, me.current)
    assert me.spares.kept == {"a": 2, "b": 2} and submitted == []
    me, submitted = agent(tmp_path / "2", {"a": 1, "b": 1}, current=lambda t: t.key != "a")
    ComputeAgent._keep_spares(me, {}, {}, me.current)
    assert me.spares.kept == {"a": 0, "b": 2}
    assert submitted == [(SPARE, ("b",))]


@pytest.fixture
def pool(tmp_path):
    hyper = FakeHypervisor()
    overlays = FakeOverlayStore(tmp_path / "overlays")
    store = TemplateStore(tmp_path / "templates", hyper, "n1", overlays.layer)
    base = DomainSpec(name=domain_name("n1~tmpl", "t1"), instance_id="t1", group="templates", node="n1~tmpl",
                      vcpus=1, memory_mib=256, disk_path=str(tmp_path / "t.qcow2"),
                      console_log=str(tmp_path / "t.log"), virt_type="fake", network="none", template=True)
    store.make_layer(Path(base.disk_path), "nbd+unix:///x", "raw")
    folder = store.root / "k1"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"key": "k1", "session": "s", "vcpus": 1, "memory_mib": 256}))
    hyper.start(base)
    hyper.save_template(base.name, folder / "memory.save")
    store.make_layer(folder / "disk.qcow2", "nbd+unix:///x", "raw")
    return SimpleNamespace(hyper=hyper, overlays=overlays, store=store, tmp=tmp_path,
                           spares=SparePool(tmp_path / "spares", hyper, "n1", overlays, store, per_template=2))


def test_a_spare_is_taken_once_claimed_whole_and_swept(pool):
    t = pool.store.get("k1")
    s1 = pool.spares.make(t, "fake", "bridge", "cfbr-x")
    s2 = pool.spares.make(t, "fake")
    assert pool.spares.count() == {"k1": 2} and pool.spares.held() == (2, 512)
    assert pool.spares.template_keys() == {"k1"}, "the template is in use while spares are on it"
    assert s1.mac and s2.mac is None, "a spare with a NIC has its own MAC"
    taken = pool.spares.take("k1")
    assert pool.spares.take("k2") is None and pool.spares.count() == {"k1": 1}
    console, seed = pool.tmp / "i1.log", pool.tmp / "i1.iso"
    seed.write_bytes(b"CD001 the instance's seed")
    spec = DomainSpec(name=taken.name, instance_id="i1", group="g", node="n1", vcpus=1, memory_mib=256,
                      disk_path=str(pool.overlays.path("g", "i1")), console_log=str(console), virt_type="fake",
                      network="bridge", bridge="cfbr-x", mac=taken.mac, seed_path=str(seed))
    placeholder = taken.seed
    assert placeholder.stat().st_size == PLACEHOLDER_BYTES
    pool.spares.claim(taken, spec, "g")
    assert pool.overlays.path("g", "i1").exists() and not taken.disk.exists() and console.exists()
    # the seed went into the placeholder the guest has, now the instance's seed file
    assert not placeholder.exists() and seed.stat().st_size == PLACEHOLDER_BYTES
    assert seed.read_bytes().startswith(b"CD001 the instance's seed\0")
    assert set(pool.hyper.list("n1")) == {"i1"} and pool.hyper.name_of("n1", "i1") == taken.name
    assert pool.spares.trim({"k1": 0}) and pool.spares.count() == {}
    pool.spares.make(t, "fake")
    assert pool.spares.sweep() and pool.hyper.list("n1~spare") == {}
    assert list((pool.tmp / "spares").iterdir()) == []
    assert isinstance(pool.hyper.list("n1")["i1"], DomainInfo), "a claimed spare is no spare: not swept"


def test_instances_still_to_start_of_another_flavor_count_against_the_spares(tmp_path):
    # no spare of theirs to claim: they will boot or restore, and need the capacity
    me, submitted = agent(tmp_path, {"a": 2, "b": 1})
    big = {f"i{k}": ("g", f"g:i{k}", Assignment(desired=DESIRED_RUN, vcpus=2, memory_mib=512)) for k in range(2)}
    ComputeAgent._keep_spares(me, big, {}, me.current)
    assert me.spares.kept == {"a": 0, "b": 0}
