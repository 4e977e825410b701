"""Lists from each worker's mirror (service/mirror.py), on a real ZooKeeper:
the same answer as reading ZooKeeper, one ZooKeeper read a list once its
records are held, membership always ZooKeeper's, updates followed, a
changed record read again once (and nothing read while no list asks)."""
from __future__ import annotations

import secrets

import pytest
from flask import Flask

from cowfleet.models import Flavor, Group, GroupStatus, Image, Instance
from cowfleet.service.flavors import service as flavors
from cowfleet.service.groups import service as groups
from cowfleet.service.images import service as images
from cowfleet.service.mirror import Mirror
from cowfleet.service.paging import ListQuery
from cowfleet.zk import layout
from cowfleet.zk.connection import connect, split_chroot
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


class Counting:
    """Counts the calls made to the ZooKeeper client it wraps."""

    def __init__(self, zk):
        self._zk, self.calls = zk, []

    def __getattr__(self, name):
        attr = getattr(self._zk, name)
        if callable(attr):
            def call(*a, **kw):
                self.calls.append((name, a[0] if a else None))
                return attr(*a, **kw)
            return call
        return attr


@pytest.fixture
def zk(lab):
    servers, _ = split_chroot(lab.state.zk)
    chroot = f"/mirror-{secrets.token_hex(4)}"
    client = connect(servers + chroot)
    yield client
    client.stop()
    client.close()
    root = connect(servers)
    root.delete(chroot, recursive=True)
    root.stop()
    root.close()


def add_group(zk, name: str, size: int = 3, **spec) -> None:
    group = Group(name=name, image="img", flavor="small", size=size, **spec)
    tx = zk.transaction()
    tx.create(layout.group(name), group.to_bytes())
    tx.create(layout.group_instances(name), b"")
    tx.create(layout.group_status(name), GroupStatus(observed_generation=1).to_bytes())
    for i in range(size):
        tx.create(layout.group_instance(name, f"i{i}"),
                  Instance(id=f"i{i}", group=name, node="n1", rack="r1", image="img", flavor="small",
                           generation=1, state="ready").to_bytes())
    assert all(r is True or isinstance(r, str) for r in tx.commit())


@pytest.fixture
def ctx():
    with Flask("mirror-test").test_request_context("/v1/instance-groups"):
        yield


def test_lists_from_the_mirror_equal_zookeeper_and_cost_one_read(zk, ctx):
    # the image the groups name (a group's status reads its image's state: a
    # missing one is read from ZooKeeper, as a record made behind the mirror's back)
    zk.create(layout.image("img"), Image(name="img").to_bytes())
    zk.create(layout.image_replicas("img"), b"")
    for i in range(10):
        add_group(zk, f"g{i:02}", labels={"tier": "web" if i % 2 else "db"})
        zk.create(layout.image(f"im{i}"), Image(name=f"im{i}").to_bytes())
        zk.create(layout.image_replicas(f"im{i}"), b"")
        zk.create(layout.flavor(f"f{i}"), Flavor(name=f"f{i}", vcpus=1, memory_mib=64, disk_gib=1).to_bytes())
    mirror = Mirror()
    for service, q in ((groups, ListQuery()), (groups, ListQuery(labels={"tier": "web"})),
                       (groups, ListQuery(limit=3, after="g04")), (images, ListQuery()),
                       (flavors, ListQuery())):
        direct = service.list_(zk, q).body
        assert service.list_(mirror.reader(zk), q).body == direct      # reads what it lacks
        reader = mirror.reader(zk)
        reader.zk = counting = Counting(zk)
        assert service.list_(reader, q).body == direct
        # the collection's children from ZooKeeper; records, statuses and instances
        # from the mirror (an image also reads the node list for its status)
        reads = [c for c in counting.calls if c[0] != "get_children" or c[1] != layout.NODES]
        assert reads == [("get_children", service_root(service))], reads


def service_root(service):
    return {groups: layout.GROUPS, images: layout.IMAGES, flavors: layout.FLAVORS}[service]


def test_membership_is_zookeepers_and_updates_follow(zk, ctx):
    add_group(zk, "a")
    mirror = Mirror()
    groups.list_(mirror.reader(zk), ListQuery())
    # created behind the mirror's back: listed at once (read from ZooKeeper)
    add_group(zk, "b", size=2)
    names = [g["name"] for g in groups.list_(mirror.reader(zk), ListQuery()).body]
    assert names == ["a", "b"]
    # deleted: gone at once
    zk.delete(layout.group("a"), recursive=True)
    assert [g["name"] for g in groups.list_(mirror.reader(zk), ListQuery()).body] == ["b"]
    # changed: the list follows within a watch's time, etag and all
    group = Group.from_bytes(zk.get(layout.group("b"))[0])
    group.size, group.generation = 5, 2
    stat = zk.set(layout.group("b"), group.to_bytes())
    inst = Instance.from_bytes(zk.get(layout.group_instance("b", "i0"))[0])
    inst.state = "failed"
    zk.set(layout.group_instance("b", "i0"), inst.to_bytes())

    def followed():
        [b] = groups.list_(mirror.reader(zk), ListQuery()).body
        return b if b["size"] == 5 and b["etag"] == str(stat.version) and b["status"]["failed"] == 1 else None
    b = wait_until(followed, 10, "the mirror following the change")
    assert b == groups.get(zk, "b")


def test_a_change_drops_the_copy_and_a_list_reads_it_once(zk, ctx):
    for i in range(3):
        zk.create(layout.flavor(f"f{i}"), Flavor(name=f"f{i}", vcpus=1, memory_mib=64, disk_gib=1).to_bytes())
    mirror = Mirror()
    flavors.list_(mirror.reader(zk), ListQuery())            # all three held, each with a watch
    # a burst of writes to one of them: its copy is dropped on the first, and
    # with no read since there is no watch for the others to fire
    for memory in (128, 256, 512):
        zk.set(layout.flavor("f1"), Flavor(name="f1", vcpus=1, memory_mib=memory, disk_gib=1).to_bytes())
    wait_until(lambda: mirror.reader(zk)._cache.held(("data", layout.flavor("f1"))) is None, 10,
               "the watch dropping f1's copy")

    def listed():
        reader = mirror.reader(zk)
        reader.zk = counting = Counting(zk)
        return flavors.list_(reader, ListQuery()).body, counting.calls
    body, calls = listed()
    assert [f["memory_mib"] for f in body] == [64, 512, 64]
    assert calls == [("get_children", layout.FLAVORS), ("get", layout.flavor("f1"))]   # only what changed
    body_again, calls = listed()
    assert body_again == body and calls == [("get_children", layout.FLAVORS)]
