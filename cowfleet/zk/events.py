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
PRUNE_BATCH = 256    # deletes in one transaction (~15 KB: far under jute.maxbuffer)


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
    return delete_oldest(zk, group, children, cap)


def delete_oldest(zk: KazooClient, group: str, children: list[str], cap: int = CAP) -> int:
    """Delete all but the newest ``cap`` of ``children`` (a sorted listing),
    oldest first, ``PRUNE_BATCH`` to a transaction; how many went. A
    transaction that fails means another writer pruned the same events
    since the listing: the rest is left to it.

    One delete at a time, going on past those already gone, made a herd:
    the writers of a 10,000-instance group's events (every agent's
    readiness thread) pruned the same listing together, and ZooKeeper
    logged 3,000-6,000 failed deletes a second, 42,000 over the ~20 s after
    a placement on 100 fake agents (bench/placement.py, its transaction log)
    -- more writes than the placement itself, while the folder grew
    because the prunes fell behind."""
    folder = layout.group_events(group)
    surplus = children[:-max(1, cap)]      # [] when there are no more than cap
    gone = 0
    for start in range(0, len(surplus), PRUNE_BATCH):
        tx = zk.transaction()
        batch = surplus[start:start + PRUNE_BATCH]
        for child in batch:
            tx.delete(f"{folder}/{child}")
        if any(isinstance(r, Exception) for r in tx.commit()):
            break
        gone += len(batch)
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
