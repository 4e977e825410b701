"""Group life-cycle steps shared by the service, the leader and the agents."""
from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError, NotEmptyError

from cowfleet.models import Group
from cowfleet.zk import layout
from cowfleet.zk.connection import read, read_children


def groups_using(zk: KazooClient, field: str, name: str) -> list[str]:
    """Groups whose spec names ``name`` as its ``field`` ("image" or "flavor")."""
    return [g.name for g, _ in read_children(zk, layout.GROUPS, Group) if getattr(g, field) == name]


def finish_delete_if_empty(zk: KazooClient, name: str) -> bool:
    """Remove a deleting group once its last instance is gone.

    Any of the service, the leader or the agent that removed the last
    instance may call this; the version check makes the race harmless.
    """
    got = read(zk, layout.group(name), Group)
    if got is None:
        return True
    group, version = got
    if not group.deleting:
        return False
    try:
        if zk.get_children(layout.group_instances(name)):
            return False
    except NoNodeError:
        pass
    tx = zk.transaction()
    for child in zk.get_children(layout.group(name)):
        if child == "instances":
            tx.delete(layout.group_instances(name))
        else:
            tx.delete(f"{layout.group(name)}/{child}")
    tx.delete(layout.group(name), version=version)
    results = tx.commit()
    ok = not any(isinstance(r, Exception) for r in results)
    if not ok and any(isinstance(r, (BadVersionError, NotEmptyError)) for r in results):
        return False
    return ok
