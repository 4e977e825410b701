"""The compute node's warm-clone template store (agents/compute/templates.py)
against the fake hypervisor (the same contract as libvirt's: a template
domain prints the template marker, its save image is libvirt's format):
made whole or not at all, reused, invalidated, pruned by LRU and cap, swept."""
from __future__ import annotations

import os
import time

import pytest

from cowfleet.agents.compute.domain import DomainSpec
from cowfleet.agents.compute.hypervisor import FakeHypervisor, domain_name
from cowfleet.agents.compute.overlays import FakeOverlayStore
from cowfleet.agents.compute.savefile import SaveImageError
from cowfleet.agents.compute.templates import TemplateError, TemplateStore, template_key


@pytest.fixture
def hyper():
    return FakeHypervisor()


@pytest.fixture
def store(tmp_path, hyper):
    return TemplateStore(tmp_path / "templates", hyper, "n1", FakeOverlayStore.layer, boot_timeout=5)


def make(store, session="demo-aaaa", vcpus=1, memory_mib=128):
    key = template_key(session, vcpus, memory_mib)
    with store.lock(key):
        return store.make(key, session, f"nbd+unix:///{session}?socket=fake-{session}", "raw", vcpus, memory_mib,
                          image=session.split("-")[0], sha256=session.split("-")[1] * 16)


def clone_spec(tmp_path, t, n=1) -> DomainSpec:
    return DomainSpec(name=domain_name("n1", f"c{n}"), instance_id=f"c{n}", group="g", node="n1", vcpus=t.vcpus,
                      memory_mib=t.memory_mib, disk_path=str(tmp_path / f"c{n}.qcow2"),
                      console_log=str(tmp_path / f"c{n}.log"), virt_type="fake", network="none")


def test_a_template_is_made_whole_frozen_and_reused(store, hyper, tmp_path):
    t = make(store)
    assert t.key == "demo-aaaa--1c128m" and t.folder == store.root / t.key
    assert (t.image, t.sha256) == ("demo", "aaaa" * 16)
    assert sorted(p.name for p in t.folder.iterdir()) == ["console.log", "disk.qcow2", "memory.save", "meta.json"]
    assert not os.access(t.disk, os.W_OK) or os.geteuid() == 0
    assert oct(t.disk.stat().st_mode & 0o777) == "0o444"
    assert "socket=fake-demo-aaaa" in t.disk.read_text()           # master -> template layer
    assert hyper.list(store.node) == {} and hyper.list("n1") == {}   # its domain stopped at the save
    assert [p.name for p in store.root.iterdir()] == [t.key]
    assert store.list() == {t.key: t} and store.session_keys() == {"demo-aaaa"}
    assert make(store) == t                                        # reused, not made again
    store.check(t)
    # a clone restores from it under its own identity
    hyper.restore_clone(t.save, clone_spec(tmp_path, t))
    assert set(hyper.list("n1")) == {"c1"}
    assert store.of_overlay_backing(str(t.disk)) == t.key
    assert store.of_overlay_backing("nbd+unix:///x?socket=/y") is None


def test_an_image_or_flavor_change_is_another_template_and_the_old_goes_when_unused(store):
    old = make(store, "demo-aaaa")
    new_image = make(store, "demo-bbbb")
    new_flavor = make(store, "demo-bbbb", vcpus=2)
    assert len({old.key, new_image.key, new_flavor.key}) == 3
    current = {new_image.key, new_flavor.key}
    # the old one is stale but a clone still runs on it: kept
    assert store.prune(in_use=lambda: {old.key}, current=lambda t: t.key in current) == []
    assert store.prune(in_use=lambda: set(), current=lambda t: t.key in current) == [old.key]
    assert set(store.list()) == current
    assert store.session_keys() == {"demo-bbbb"}


def test_an_unused_template_goes_when_idle(store):
    a, b, c = make(store, "img1-aaaa"), make(store, "img2-aaaa"), make(store, "img3-aaaa")
    long_ago = time.time() - store.idle_s - 1
    for t in (a, b):
        os.utime(t.folder, (long_ago, long_ago))
    assert store.prune(in_use=lambda: {b.key}, current=lambda t: True) == [a.key]     # b: a clone runs on it
    assert set(store.list()) == {b.key, c.key}


def test_over_the_cap_the_least_recently_used_unused_go_first(store):
    ts = [make(store, f"img{n}-aaaa") for n in range(4)]
    size = ts[0].size()
    store.cap_bytes = 2 * size
    past = time.time() - 100          # within idle_s
    for n, t in enumerate(ts):                    # made in order: 0 the least recently used
        os.utime(t.folder, (past + n, past + n))
    store.get(ts[0].key)                          # ... until used now
    removed = store.prune(in_use=lambda: {ts[1].key}, current=lambda t: True)
    # oldest first: 1 (in use: kept), 2, 3, then 0 (just used): 2 and 3 go, and then it is at the cap
    assert removed == [ts[2].key, ts[3].key]
    assert set(store.list()) == {ts[0].key, ts[1].key}
    assert store.prune(in_use=lambda: {ts[1].key}, current=lambda t: True) == []    # at the cap: nothing
    store.cap_bytes = 0
    assert store.prune(in_use=lambda: {ts[1].key}, current=lambda t: True) == [ts[0].key]
    assert set(store.list()) == {ts[1].key}


def test_a_template_being_made_or_cloned_is_not_pruned(store):
    t = make(store)
    with store.using(t.key) as got:
        assert got == t
        assert store.prune(in_use=lambda: set(), current=lambda t: False) == []
    with store.lock(t.key):
        assert store.prune(in_use=lambda: set(), current=lambda t: False) == []
    assert store.prune(in_use=lambda: set(), current=lambda t: False) == [t.key]
    assert list(store.root.iterdir()) == []
    with store.using(t.key) as got:
        assert got is None                        # gone: the clone boots or makes it anew


def test_a_half_made_template_and_its_domain_are_swept_at_start(store, hyper, tmp_path):
    half = store.root / ".making-tdeadbeef"
    half.mkdir()
    (half / "meta.json").write_text('{"key": "k", "session": "s", "vcpus": 1, "memory_mib": 128}')
    (half / "disk.qcow2").write_text("half")
    foreign = store.root / "not-a-template"
    foreign.mkdir()
    spec = DomainSpec(name=domain_name(store.node, "tdeadbeef"), instance_id="tdeadbeef", group="templates",
                      node=store.node, vcpus=1, memory_mib=128, disk_path=str(half / "disk.qcow2"),
                      console_log=str(tmp_path / "t.log"), virt_type="fake", network="none", template=True)
    hyper.start(spec)
    assert store.session_keys() == {"s"}          # its session is kept while it is being made
    t = make(store)
    assert sorted(store.sweep()) == sorted([spec.name, ".making-tdeadbeef", "not-a-template"])
    assert hyper.list(store.node) == {}
    assert [p.name for p in store.root.iterdir()] == [t.key]      # the whole one stays


class StopsAtBoot(FakeHypervisor):
    """A template guest that never prints its marker (an image without the
    warm-clone contract) and whose domain then dies."""
    def start(self, spec, attach=None):
        with self._lock:
            self._domains[spec.name] = (spec, False)
        open(spec.console_log, "w").write("a guest that knows nothing of templates\n")
        self.destroy(spec.name)


def test_a_template_that_cannot_be_made_leaves_nothing(tmp_path):
    hyper = StopsAtBoot()
    store = TemplateStore(tmp_path / "templates", hyper, "n1", FakeOverlayStore.layer, boot_timeout=5)
    with pytest.raises(TemplateError, match="stopped before its marker"):
        make(store)
    assert list(store.root.iterdir()) == [] and hyper.list(store.node) == {}


def test_a_corrupt_save_image_is_never_restored(store, hyper, tmp_path):
    t = make(store)
    raw = bytearray(t.save.read_bytes())
    raw[20] ^= 0xFF                               # the version field
    os.chmod(t.save, 0o644)
    t.save.write_bytes(bytes(raw))
    with pytest.raises(SaveImageError):
        store.check(t)
    with pytest.raises(SaveImageError):
        hyper.restore_clone(t.save, clone_spec(tmp_path, t))
    assert hyper.list("n1") == {}
