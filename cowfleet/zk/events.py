"""A group's recent events: a capped list of small sequential znodes.

``/cowfleet/events/<group>/ev-NNNNNNNNNN`` (ZooKeeper numbers them, so the
number is the event's id and their order). Writers -- the service, the
coordinating leader, the compute agents -- add one after the change they
report has been committed, best effort: an event is an account for people,
never a request, so a writer that dies between the two loses an event and
nothing else. Growth is bounded: every ``PRUNE_EVERY``-th event its writer
removes all but the newest ``CAP``; the folder goes with the group (in the
transaction that removes it) and a leader's periodic sweep removes the folder
of any group that is gone (``forget_orphans``).
"""
from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError, NotEmptyError

from cowfleet.models import Event
from cowfleet.zk import layout

CAP = 200            # events kept per group (~250 bytes each: ~50 KB a group)
PRUNE_EVERY = 16     # pruning lists the folder: once in this many writes, not each


def seq_of(child: str) -> str:
    return child[len(layout.EVENT_PREFIX):]


def record(zk: KazooClient, group: str, event: Event) -> str | None:
    """Add an event to the group's list; its id, or None when the group is gone."""
    prefix = f"{layout.group_events(group)}/{layout.EVENT_PREFIX}"
    for _ in range(2):
        try:
            path = zk.create(prefix, event.to_bytes(), sequence=True)
        except NoNodeError:
            # the first event of the group (or of one made before events)
            if not zk.exists(layout.group(group)):
                return None
            try:
                zk.ensure_path(layout.group_events(group))
            except NodeExistsError:
                pass
            continue
        seq = seq_of(path.rsplit("/", 1)[1])
        if int(seq) % PRUNE_EVERY == 0:
            prune(zk, group)
        return seq
    return None


def record_safely(zk: KazooClient, group: str, event: Event, log=None) -> str | None:
    """``record`` for writers whose own work must not fail for an event."""
    try:
        return record(zk, group, event)
    except Exception as exc:       # ZooKeeper trouble: the change itself is committed already
        if log is not None:
            log.warning("could not record event %s of group %s: %s", event.reason, group, exc)
        return None


def prune(zk: KazooClient, group: str, cap: int = CAP) -> int:
    """Remove all but the newest ``cap`` (at least 1) events; how many went."""
    try:
        children = sorted(zk.get_children(layout.group_events(group)))
    except NoNodeError:
        return 0
    gone = 0
    for child in children[:-cap]:
        try:
            zk.delete(f"{layout.group_events(group)}/{child}")
            gone += 1
        except NoNodeError:
            pass
    return gone


def read(zk: KazooClient, group: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
    """Events oldest first: with ``after`` (an id), the first ``limit`` after
    it; without, the newest ``limit``. Returns (events, more after these)."""
    try:
        children = sorted(zk.get_children(layout.group_events(group)))
    except NoNodeError:
        return [], False
    if after is not None:
        children = [c for c in children if seq_of(c) > after]
        chosen, more = children[:limit], len(children) > limit
    else:
        chosen, more = children[-limit:], False
    # one round trip for all of them (async gets), not one each
    pending = [(c, zk.get_async(f"{layout.group_events(group)}/{c}")) for c in chosen]
    out = []
    for child, result in pending:
        try:
            data, _ = result.get()
        except NoNodeError:
            continue                     # pruned meanwhile
        out.append(dict(Event.from_bytes(data).to_dict(), id=seq_of(child)))
    return out, more


def delete_ops(zk: KazooClient, tx, group: str) -> None:
    """In the transaction that removes a group: remove its events too."""
    try:
        children = zk.get_children(layout.group_events(group))
    except NoNodeError:
        return
    for child in children:
        tx.delete(f"{layout.group_events(group)}/{child}")
    tx.delete(layout.group_events(group))


def forget_orphans(zk: KazooClient) -> int:
    """Remove the event lists of groups that are gone (an event written
    while its group was being removed); how many."""
    try:
        names = set(zk.get_children(layout.EVENTS))
        groups = set(zk.get_children(layout.GROUPS))
    except NoNodeError:
        return 0
    gone = 0
    for name in names - groups:
        try:
            zk.delete(layout.group_events(name), recursive=True)
            gone += 1
        except (NoNodeError, NotEmptyError):
            pass
    return gone
