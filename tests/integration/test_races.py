"""Races between writers, reproduced deterministically: the service's own
functions against a real ZooKeeper (a chroot of the session lab's server),
with the second writer slipped in at the exact point between the first
one's check and its commit."""
from __future__ import annotations

import secrets

import pytest

from cowfleet.service.app import _bootstrap
from cowfleet.service.flavors import service as flavors
from cowfleet.service.groups import service as groups
from cowfleet.specs import GroupSpecSchema
from cowfleet.service import upsert
from cowfleet.service.images import service as images
from cowfleet.specs import ImageSpecSchema
from cowfleet.service.preconditions import Precondition
from cowfleet.service.problems import Problem
from cowfleet.zk import layout
from cowfleet.zk.connection import connect

pytestmark = pytest.mark.integration


@pytest.fixture
def zk(lab):
    hosts = lab.state.zk.split("/")[0] + f"/races-{secrets.token_hex(3)}"
    client = connect(hosts)
    _bootstrap(client)                       # the built-in flavors, as the service makes them
    yield client
    for child in client.get_children("/"):
        client.delete(f"/{child}", recursive=True)
    client.stop()
    client.close()


def image(zk, name="img"):
    images.put(zk, name, ImageSpecSchema().load({"source_url": "file:///nonexistent", "format": "raw",
                                                 "min_replicas": 1}))


def group_spec(**over):
    return GroupSpecSchema().load(dict({"image": "img", "flavor": "small", "size": 0}, **over))


def outcome(fn, *args, **kw):
    try:
        fn(*args, **kw)
        return "ok"
    except Problem as exc:
        return exc.status


def test_group_created_while_its_image_is_deleted_after_the_in_use_check(zk, monkeypatch):
    image(zk)
    real = upsert.groups_using
    created = []

    def check_then_group_arrives(zk_, field, name):
        users = real(zk_, field, name)
        if not created:        # the other writer commits right after this check
            created.append(outcome(groups.put, zk, "g", group_spec()))
        return users
    monkeypatch.setattr(upsert, "groups_using", check_then_group_arrives)
    deleted = outcome(images.delete, zk, "img")
    # never both: a group naming an image that is gone
    assert not (created == ["ok"] and deleted == "ok"), "the image was deleted under a group that uses it"
    assert (created, deleted) == (["ok"], 409)
    assert zk.exists(layout.image("img")) and zk.exists(layout.group("g"))


def test_image_deleted_after_the_group_checked_it_exists(zk, monkeypatch):
    image(zk)
    real = groups._check_references
    deleted = []

    def check_then_image_goes(zk_, spec, **kw):
        real(zk_, spec, **kw)
        if not deleted:
            deleted.append(outcome(images.delete, zk, "img"))
    monkeypatch.setattr(groups, "_check_references", check_then_image_goes)
    created = outcome(groups.put, zk, "g", group_spec())
    assert not (created == "ok" and deleted == ["ok"]), "a group was created for an image deleted meanwhile"
    assert deleted == ["ok"] and created == 422
    assert not zk.exists(layout.group("g")) and not zk.exists(layout.image("img"))


def test_flavor_deleted_after_the_group_checked_it_exists(zk, monkeypatch):
    image(zk)
    flavors.put(zk, "tiny", {"vcpus": 1, "memory_mib": 64, "disk_gib": 1})
    real = groups._check_references
    deleted = []

    def check_then_flavor_goes(zk_, spec, **kw):
        real(zk_, spec, **kw)
        if not deleted:
            deleted.append(outcome(flavors.delete, zk, "tiny"))
    monkeypatch.setattr(groups, "_check_references", check_then_flavor_goes)
    created = outcome(groups.put, zk, "g", group_spec(flavor="tiny"))
    assert not (created == "ok" and deleted == ["ok"]), "a group was created for a flavor deleted meanwhile"
    assert deleted == ["ok"] and created == 422


def test_flavor_deleted_while_a_group_arrives_after_the_in_use_check(zk, monkeypatch):
    image(zk)
    flavors.put(zk, "tiny", {"vcpus": 1, "memory_mib": 64, "disk_gib": 1})
    real = upsert.groups_using
    created = []

    def check_then_group_arrives(zk_, field, name):
        users = real(zk_, field, name)
        if not created:
            created.append(outcome(groups.put, zk, "g", group_spec(flavor="tiny")))
        return users
    monkeypatch.setattr(upsert, "groups_using", check_then_group_arrives)
    deleted = outcome(flavors.delete, zk, "tiny")
    assert (created, deleted) == (["ok"], 409)


def test_flavor_change_loses_to_a_group_that_arrives_after_the_in_use_check(zk, monkeypatch):
    # a flavor changes only while no group names it: instances that run keep
    # their size. The change is written only while the flavor's users guard
    # is where the check read it (upsert.Guarded); it was a plain write.
    image(zk)
    flavors.put(zk, "tiny", {"vcpus": 1, "memory_mib": 64, "disk_gib": 1})
    real = flavors.users_of
    created = []

    def check_then_group_arrives(zk_, kind, name, path):
        got = real(zk_, kind, name, path)
        if not created:
            created.append(outcome(groups.put, zk, "g", group_spec(flavor="tiny")))
        return got
    monkeypatch.setattr(flavors, "users_of", check_then_group_arrives)
    changed = outcome(flavors.put, zk, "tiny", {"vcpus": 1, "memory_mib": 128, "disk_gib": 1})
    assert (created, changed) == (["ok"], 409)
    assert flavors.get(zk, "tiny")["memory_mib"] == 64, "a flavor in use was resized"


def test_flavor_change_with_if_match_after_the_check_is_412_not_a_retry(zk, monkeypatch):
    flavors.put(zk, "tiny", {"vcpus": 1, "memory_mib": 64, "disk_gib": 1})
    version = zk.get(layout.flavor("tiny"))[1].version
    real = flavors.users_of

    def check_then_flavor_changes(zk_, kind, name, path):
        got = real(zk_, kind, name, path)
        zk.set(layout.flavor("tiny"), zk.get(layout.flavor("tiny"))[0])   # another writer's change
        return got
    monkeypatch.setattr(flavors, "users_of", check_then_flavor_changes)
    assert outcome(flavors.put, zk, "tiny", {"vcpus": 1, "memory_mib": 128, "disk_gib": 1},
                   Precondition.at(version)) == 412


def test_image_delete_with_if_match_loses_to_a_change_after_its_check(zk, monkeypatch):
    image(zk)
    version = zk.get(layout.image("img"))[1].version
    real = upsert.groups_using

    def check_then_image_changes(zk_, field, name):
        users = real(zk_, field, name)
        images.put(zk, "img", ImageSpecSchema().load({"source_url": "file:///nonexistent", "format": "raw",
                                                      "min_replicas": 1, "labels": {"changed": "yes"}}))
        return users
    monkeypatch.setattr(upsert, "groups_using", check_then_image_changes)
    assert outcome(images.delete, zk, "img", Precondition.at(version)) == 412
    assert zk.exists(layout.image("img"))


def test_the_in_use_check_reads_the_groups_only_when_the_guard_moved(zk, monkeypatch):
    # upsert.users_of: a change of an unused flavor reads every group once,
    # then not again while no group write bumped the flavor's guard
    image(zk)
    flavors.put(zk, "tiny", {"vcpus": 1, "memory_mib": 64, "disk_gib": 1})
    real, reads = upsert.groups_using, []

    def counted(zk_, field, name):
        reads.append(name)
        return real(zk_, field, name)
    monkeypatch.setattr(upsert, "groups_using", counted)

    def resize(memory_mib):
        return outcome(flavors.put, zk, "tiny", {"vcpus": 1, "memory_mib": memory_mib, "disk_gib": 1})
    assert (resize(128), len(reads)) == ("ok", 1)
    assert (resize(64), len(reads)) == ("ok", 1)            # the guard unchanged: no group read
    assert outcome(groups.put, zk, "g", group_spec(flavor="tiny")) == "ok"
    assert (resize(128), len(reads)) == (409, 2)            # the group's write bumped the guard
    assert (resize(128), len(reads)) == (409, 3)            # a user found is not remembered
    assert outcome(groups.put, zk, "g", group_spec(flavor="small")) == "ok"   # tiny's guard stays
    assert (resize(128), len(reads)) == ("ok", 4)
    assert (resize(256), len(reads)) == ("ok", 4)
    assert outcome(flavors.delete, zk, "tiny") == "ok"      # guarded by the same version
    assert len(reads) == 4 and not zk.exists(layout.flavor("tiny"))


def test_an_update_from_a_known_record_reads_only_when_another_writer_moved_it(zk, monkeypatch):
    """``update_from`` (the compute agent's state writes): from the record
    and version the writer last wrote, no read; when another writer changed
    it since, the version guard fails and the change is made on a fresh
    read, losing nothing; the known record itself is never changed."""
    from cowfleet.models import Instance, InstanceState
    from cowfleet.zk.connection import read, update_from
    path = "/inst"
    inst = Instance(id="i1", group="g", node="n1", rack="r1", image="img", flavor="small", generation=1)
    zk.create(path, inst.to_bytes())
    reads = []
    real_get = zk.get
    monkeypatch.setattr(zk, "get", lambda p, *a, **k: reads.append(p) or real_get(p, *a, **k))

    def to(state):
        def change(i):
            i.state = state
            return i
        return change
    known = (inst, 0)
    got = update_from(zk, path, Instance, to(InstanceState.STARTING), known)
    assert reads == [] and got[1] == 1 and got[0].state == InstanceState.STARTING
    assert inst.state == InstanceState.PENDING                       # the known record is untouched
    other = read(zk, path, Instance)[0]                              # another writer: a message
    other.message = "kept"
    zk.set(path, other.to_bytes(), version=1)
    reads.clear()
    got = update_from(zk, path, Instance, to(InstanceState.RUNNING), got)   # stale now: version 1, not 2
    assert reads == [path] and got[1] == 3
    assert (got[0].state, got[0].message) == (InstanceState.RUNNING, "kept")
    assert read(zk, path, Instance)[0] == got[0]
    # another writer moves it back; the known record (RUNNING, version 3) says
    # there is nothing to write, which only a fresh read may decide
    back = read(zk, path, Instance)[0]
    back.state = InstanceState.PENDING
    zk.set(path, back.to_bytes(), version=3)

    def running(i):
        if i.state == InstanceState.RUNNING:
            return None
        i.state = InstanceState.RUNNING
        return i
    got = update_from(zk, path, Instance, running, got)
    assert got is not None and got[1] == 5 and read(zk, path, Instance)[0].state == InstanceState.RUNNING
