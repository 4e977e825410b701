"""The create-or-update loop that PUT on images and flavors share.

Without ``If-Match`` a lost race (the znode appeared, or changed, between
our read and our write) is not the client's problem: the record is read
again and the write retried, up to ``ATTEMPTS`` times. With ``If-Match`` the
client asked for given versions, so a lost race is 412
(``service/preconditions.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from cowfleet.service.api import fetch
from cowfleet.service.preconditions import Precondition, precondition_failed
from cowfleet.protocol import ProblemType
from cowfleet.service.problems import conflict, unavailable
from cowfleet.zk.connection import read
from cowfleet.zk.groups import delete_guarded, groups_using, guard_stat

R = TypeVar("R")
ATTEMPTS = 10
# the 409 of deleting an image or flavor some group uses
IN_USE = {"image": ProblemType.IMAGE_IN_USE, "flavor": ProblemType.FLAVOR_IN_USE}

# (cluster, object path) -> the mzxid of its users guard when a read after it
# found no group naming the object (this worker's; see users_of). The cluster
# (servers and chroot) is in the key because zxids are counted per ensemble.
_UNUSED_AT: dict[tuple[str, str], int] = {}
_UNUSED_MAX = 4096


@dataclass(frozen=True)
class Guarded(Generic[R]):
    """What ``update`` returns to write ``record`` only while each of
    ``checks`` (znode path, version) is still at the version read: one
    transaction of the checks and the write. A flavor's change is checked
    against its users guard, so a group naming it between the in-use check
    and the write makes the write fail (and the next round finds the group:
    409) rather than resize instances that run."""
    record: R
    checks: tuple[tuple[str, int], ...] = ()


def users_of(zk, kind: str, name: str, path: str) -> tuple[int | None, list[str]]:
    """(the version of the object's users guard, or None if the object is
    gone; the groups naming it), the guard read before the groups.

    Reading every group's record is one ZooKeeper read a group (11 for 10
    groups): ~1.8 ms of a worker's CPU on each change of a flavor at 200 req/s
    (bench/README.md). A group names an object only in a transaction that
    bumps the object's guard (groups/service.py), so while the guard has not
    changed since a read that found no user -- the same ``mzxid``; a guard
    deleted and made again has another -- there is still none, and the
    groups are not read again. A user found, or the guard moved: read them."""
    stat = guard_stat(zk, path)
    if stat is None:
        return None, groups_using(zk, kind, name)
    key = (f"{getattr(zk, 'hosts', '')}{getattr(zk, 'chroot', '')}", path)
    if _UNUSED_AT.get(key) == stat.mzxid:
        return stat.version, []
    users = groups_using(zk, kind, name)
    if users:
        _UNUSED_AT.pop(key, None)
    else:
        if len(_UNUSED_AT) >= _UNUSED_MAX:      # objects deleted long ago: start over
            _UNUSED_AT.clear()
        _UNUSED_AT[key] = stat.mzxid
    return stat.version, users


def create_or_update(zk, path: str, cls: type[R], label: str, pre: Precondition,
                     create: Callable[[], R], update: Callable[[R], R | None]) -> tuple[R, int, bool]:
    """Create the record at ``path`` or update it; returns (record, version, created).

    ``create()`` writes a new record (raising ``NodeExistsError`` if one
    appeared meanwhile) and returns it; ``update(current)`` returns the
    record to write, or None when the spec is already in place (nothing is
    written, the version stays). ``label`` names the object in errors, e.g.
    "flavor 'small'".
    """
    for _ in range(ATTEMPTS):
        got = read(zk, path, cls)
        if got is None:
            pre.check_missing(label)
            try:
                return create(), 0, True
            except NodeExistsError:
                continue
        current, version = got
        pre.check(version, label)
        new = update(current)
        if new is None:
            return current, version, False
        checks = ()
        if isinstance(new, Guarded):
            new, checks = new.record, new.checks
        stat, changed = _set_checked(zk, path, new.to_bytes(), version, checks)
        if stat is None:
            if pre.pinned and changed:
                raise precondition_failed(f"{label} changed meanwhile")
            continue
        return new, stat.version, False
    raise unavailable("too many concurrent writers; retry")


def _set_checked(zk, path: str, data: bytes, version: int, checks: tuple[tuple[str, int], ...]):
    """(the write's stat or None, whether the record itself had changed)."""
    if not checks:
        try:
            return zk.set(path, data, version=version), False
        except BadVersionError:
            return None, True
    tx = zk.transaction()
    for checked, at in checks:
        tx.check(checked, at)
    tx.set_data(path, data, version=version)
    results = tx.commit()
    if not any(isinstance(r, Exception) for r in results):
        return results[-1], False
    # ZooKeeper gives the operation that failed its own error and the others
    # RolledBackError (before it) or RuntimeInconsistency (after it)
    return None, isinstance(results[-1], (BadVersionError, NoNodeError))


def delete_unless_used(zk, path: str, cls: type[R], kind: str, name: str, pre: Precondition,
                       children: tuple[str, ...] = (), refuse: Callable[[], None] | None = None) -> None:
    """Delete an image or flavor (``kind``) that no group names, in one
    transaction guarded by the versions read before the in-use check (the
    object's and its users guard's: cowfleet/zk/groups.py), so a group made
    meanwhile wins: 409. ``refuse()`` raises for objects that never go."""
    label = f"{kind} '{name}'"
    for _ in range(ATTEMPTS):
        _obj, version = fetch(zk, path, cls, kind, name)
        pre.check(version, label)
        if refuse is not None:
            refuse()
        guard, users = users_of(zk, kind, name, path)     # the guard read before the in-use check
        if users:
            raise conflict(IN_USE[kind], f"{label} is used by instance group(s): {', '.join(users)}")
        if guard is not None and delete_guarded(zk, path, version, guard, children):
            return
        if pre.pinned:
            got = read(zk, path, cls)
            if got is not None and got[1] != version:
                raise precondition_failed(f"{label} changed meanwhile")
    raise unavailable("too many concurrent writers; retry")
