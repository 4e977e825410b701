"""Group life-cycle steps shared by the service, the leader and the agents."""
from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError
from kazoo.protocol.states import ZnodeStat

from cowfleet.models import Group
from cowfleet.zk import events, layout
from cowfleet.zk.connection import read, read_children


def groups_using(zk: KazooClient, field: str, name: str) -> list[str]:
    """Groups whose spec names ``name`` as its ``field`` ("image" or "flavor")."""
    return [g.name for g, _ in read_children(zk, layout.GROUPS, Group) if getattr(g, field) == name]


def finish_delete_if_empty(zk: KazooClient, name: str) -> bool:
    """Remove a deleting group once its last instance is gone.

    Any of the service, the leader or the agent that removed the last
    instance may call this; the version check makes the race harmless.
    """
    for _ in range(5):
        got = read(zk, layout.group(name), Group)
        if got is None:
            return True
        group, version = got
        if not group.deleting:
            return False
        # the folder's stat counts its children: every termination of a
        # 10,000-instance group asked for the whole list (~200 KB) before,
        # O(n^2) over its deletion (bench/placement.py --delete: ~20 a second)
        left = zk.exists(layout.group_instances(name))
        if left is not None and left.numChildren:
            return False
        tx = zk.transaction()
        for child in zk.get_children(layout.group(name)):
            if child == "instances":
                tx.delete(layout.group_instances(name))
            else:
                tx.delete(f"{layout.group(name)}/{child}")
        events.delete_ops(zk, tx, name)          # its events go with it
        tx.delete(layout.group(name), version=version)
        results = tx.commit()
        if not any(isinstance(r, Exception) for r in results):
            return True
        if any(isinstance(r, BadVersionError) for r in results):
            return False
        if not any(isinstance(r, NotEmptyError) for r in results):
            return False
        # an event (or an instance) was added since the listing: list again
    return False


# -- references from groups to images and flavors ------------------------------------
#
# A group names an image and a flavor; neither may be deleted while a group
# names it. Checking "no group uses it" and then deleting is a race (a group
# created in between names an object that is gone), and so is checking "it
# exists" and then creating the group. Each image and flavor therefore has a
# guard znode, ``<object>/users``: every group write bumps the guards of what
# it names in its own transaction (failing if they are gone), and a delete
# commits only if the guard's version is still the one it read before its
# in-use check. Whichever commits second sees the other.

def guard_version(zk: KazooClient, obj_path: str) -> int | None:
    """The version of the object's guard, made if the object predates guards;
    None if the object is gone."""
    stat = guard_stat(zk, obj_path)
    return None if stat is None else stat.version


def guard_stat(zk: KazooClient, obj_path: str) -> ZnodeStat | None:
    """The object's guard's stat (``guard_version``'s, with its ``mzxid``)."""
    for _ in range(3):
        try:
            return zk.get(layout.users_guard(obj_path))[1]
        except NoNodeError:
            if not zk.exists(obj_path):
                return None
            try:
                zk.create(layout.users_guard(obj_path), b"")
            except (NodeExistsError, NoNodeError):
                pass
    return None


def touch_guards(tx, *obj_paths: str) -> None:
    """In a group's transaction: bump the guards of the objects it names (the
    transaction fails with NoNodeError if one of them is gone)."""
    for path in obj_paths:
        tx.set_data(layout.users_guard(path), b"")


def delete_guarded(zk: KazooClient, obj_path: str, version: int, guard: int,
                   children: tuple[str, ...] = ()) -> bool:
    """Delete an object (and the listed child folders with their children)
    if neither it nor its guard changed since they were read; False when
    something did (the caller reads again)."""
    tx = zk.transaction()
    tx.check(obj_path, version)
    tx.check(layout.users_guard(obj_path), guard)
    for child in children:
        folder = f"{obj_path}/{child}"
        try:
            for leaf in zk.get_children(folder):
                tx.delete(f"{folder}/{leaf}")
            tx.delete(folder)
        except NoNodeError:
            pass
    tx.delete(layout.users_guard(obj_path))
    tx.delete(obj_path)
    return not any(isinstance(r, Exception) for r in tx.commit())
