"""Opening a ZooKeeper session the same way everywhere.

The connection string lists every server of the ensemble (kazoo moves to
another one when its server dies) and may end in a chroot (``/cluster-a``),
which isolates clusters and tests from one another.

A closed cluster (a cluster secret is configured: ``cowfleet.config``):
every session authenticates as the cluster's digest identity
(``cowfleet.signing.zk_credentials``) and creates every znode -- kazoo's
recipes' and transactions' included, through ``default_acl`` -- with one
ACL: that identity may do everything, nobody else anything (not even list
children). The chroot's own znode gets the same ACL. Upgrade: a tree made
before the secret (znodes open to world:anyone) is closed by the first
closed session that finds ``/cowfleet`` open (``close_tree``): every znode
under it, then ``/cowfleet`` itself, so a crash midway leaves it open and
the next session finishes the job. Programs still without the secret lose
access at that moment: upgrade them all together (docs/design.md).
"""
from __future__ import annotations

import copy
import json
import logging
from typing import Callable, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoAuthError, NoNodeError, NodeExistsError, RolledBackError
from kazoo.retry import KazooRetry
from kazoo.protocol.states import ZnodeStat
from kazoo.security import ACL, make_digest_acl

from cowfleet.config import SECRET_FILE_VAR, cluster_secret
from cowfleet.models import Record
from cowfleet.signing import zk_credentials
from cowfleet.zk import layout
from cowfleet.zk.handler import PollHandler

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)


def split_chroot(hosts: str) -> tuple[str, str | None]:
    if "/" in hosts:
        servers, chroot = hosts.split("/", 1)
        return servers, "/" + chroot.strip("/") if chroot.strip("/") else None
    return hosts, None


_CONFIGURED = object()


def access(secret: bytes | None) -> dict:
    """kazoo's ``auth_data`` and ``default_acl`` for a cluster with
    ``secret`` (none for an open cluster)."""
    if secret is None:
        return {}
    user, password = zk_credentials(secret)
    return {"auth_data": [("digest", f"{user}:{password}")],
            "default_acl": [make_digest_acl(user, password, all=True)]}


def connect(hosts: str, timeout: float = 15.0, listener: Callable | None = None,
            secret: bytes | None | object = _CONFIGURED) -> KazooClient:
    """Start a session; create the chroot and the top-level layout if missing.
    ``secret``: the cluster secret (default: the configured one; None: open)."""
    secret = cluster_secret() if secret is _CONFIGURED else secret
    auth = access(secret)
    servers, chroot = split_chroot(hosts)
    if chroot:
        # kazoo does not create its chroot; a short session without it does.
        boot = KazooClient(hosts=servers, timeout=timeout, handler=PollHandler(), **auth)
        boot.start(timeout=timeout)
        try:
            boot.ensure_path(chroot)
            if auth:
                _close(boot, chroot, auth["default_acl"])
        except NoAuthError:
            raise _refused(hosts, auth) from None
        finally:
            boot.stop()
            boot.close()
    zk = KazooClient(hosts=hosts, timeout=timeout, handler=PollHandler(),
                     connection_retry=KazooRetry(max_tries=-1, max_delay=2),
                     command_retry=KazooRetry(max_tries=5, max_delay=1), **auth)
    if listener:
        zk.add_listener(listener)
    zk.start(timeout=timeout)
    try:
        for path in layout.TOP_LEVEL:
            zk.ensure_path(path)
        try:
            # (ensure_path of existing znodes needs no right: a session the
            # ACLs keep out would only fail at its first real read)
            zk.get_children(layout.ROOT)
        except NoAuthError:
            raise _refused(hosts, auth) from None
        if auth:
            close_tree(zk, auth["default_acl"])
    except Exception:
        zk.stop()
        zk.close()
        raise
    return zk


def _refused(hosts: str, auth: dict) -> NoAuthError:
    return NoAuthError(f"ZooKeeper refuses {hosts}: the cluster is closed and this program "
                       + ("has another secret" if auth else f"has no secret ({SECRET_FILE_VAR})"))


def _close(zk: KazooClient, path: str, acl: list[ACL]) -> bool:
    """Give ``path`` the cluster's ACL if it has another; True if it had to."""
    current, _ = zk.get_acls(path)
    if set(current) == set(acl):
        return False
    zk.set_acls(path, acl)
    return True


def close_tree(zk: KazooClient, acl: list[ACL]) -> int:
    """The upgrade of a tree made open: every znode under ``layout.ROOT``
    gets ``acl``, then ``layout.ROOT`` itself (the mark that it is done: one
    read on every later connect). Returns how many znodes changed."""
    if set(zk.get_acls(layout.ROOT)[0]) == set(acl):
        return 0
    log.warning("closing the znodes of %s made before the cluster had a secret", layout.ROOT)
    changed, todo = 0, [layout.ROOT]
    while todo:
        path = todo.pop()
        try:
            todo.extend(f"{path}/{child}" for child in zk.get_children(path))
            if path != layout.ROOT:
                changed += _close(zk, path, acl)
        except NoNodeError:          # gone meanwhile (an ephemeral, a released lock)
            continue
    changed += _close(zk, layout.ROOT, acl)
    log.warning("closed %d znodes", changed)
    return changed


def read(zk: KazooClient, path: str, cls: type[R]) -> tuple[R, int] | None:
    """The record at ``path`` and its znode version, or None if absent."""
    return _record(lambda: zk.get(path), cls)


def read_later(zk: KazooClient, path: str, cls: type[R]) -> Callable[[], tuple[R, int] | None]:
    """``read`` sent now, answered when the returned function is called:
    reads sent before the first answer is needed share one round trip."""
    pending = zk.get_async(path)
    return lambda: _record(pending.get, cls)


def _record(get: Callable[[], tuple[bytes, ZnodeStat]], cls: type[R]) -> tuple[R, int] | None:
    """What ``read`` and ``read_later`` answer, from a get of the znode."""
    try:
        data, stat = get()
    except NoNodeError:
        return None
    return cls.from_bytes(data), stat.version


def read_children(zk: KazooClient, path: str, cls: type[R]) -> list[tuple[R, int]]:
    """All child records of ``path`` (children vanishing meanwhile are skipped)."""
    try:
        names = zk.get_children(path)
    except NoNodeError:
        return []
    return read_named(zk, path, names, cls)


def read_named(zk: KazooClient, path: str, names: list[str], cls: type[R]) -> list[tuple[R, int]]:
    """The records of the children ``names`` of ``path``, in name order
    (children vanishing meanwhile are skipped)."""
    # async gets in flight together: one round trip instead of one per child
    pending = [(n, zk.get_async(f"{path}/{n}")) for n in sorted(names)]
    out = []
    for _name, res in pending:
        try:
            data, stat = res.get()
        except NoNodeError:
            continue
        try:
            out.append((cls.from_bytes(data), stat.version))
        except (ValueError, TypeError, json.JSONDecodeError):
            log.warning("skipping unreadable record under %s", path)
    return out


def update(zk: KazooClient, path: str, cls: type[R], change: Callable[[R], R | None],
           tries: int = 20) -> R | None:
    """Read-modify-write with the znode version as guard; retried on races.

    ``change`` returns the new record, or None to write nothing. Returns the
    record written (or None when the znode is gone or nothing changed).
    """
    got = update_from(zk, path, cls, change, None, tries)
    return got[0] if got else None


def update_from(zk: KazooClient, path: str, cls: type[R], change: Callable[[R], R | None],
                known: tuple[R, int] | None, tries: int = 20) -> tuple[R, int] | None:
    """``update`` that answers the record written with its new version, and
    starts from ``known`` (a record and its version: the caller's own last
    read or write of it) instead of a read. A stale one fails the version
    guard and the record is read anew, and so is one of which ``change``
    says there is nothing to write (an older one may say so wrongly);
    ``change`` gets a copy of it."""
    for attempt in range(tries):
        guess = attempt == 0 and known is not None
        if guess:
            rec, version = copy.copy(known[0]), known[1]
        else:
            got = read(zk, path, cls)
            if got is None:
                return None
            rec, version = got
        new = change(rec)
        if new is None:
            if guess:
                continue        # "nothing to change" is only believed of a record read now
            return None
        try:
            stat = zk.set(path, new.to_bytes(), version=version)
            return new, stat.version
        except BadVersionError:
            continue
        except NoNodeError:
            return None
    raise RuntimeError(f"too many concurrent updates of {path}")


def commit(tx) -> list:
    """Commit a transaction; if it failed, raise the error of the operation
    that failed (kazoo reports the others as RolledBackError)."""
    results = tx.commit()
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise next((e for e in errors if not isinstance(e, RolledBackError)), errors[0])
    return results


def delete_quietly(zk: KazooClient, path: str, recursive: bool = False) -> bool:
    try:
        zk.delete(path, recursive=recursive)
        return True
    except NoNodeError:
        return False


def create_quietly(zk: KazooClient, path: str, value: bytes = b"", **kw) -> bool:
    try:
        zk.create(path, value, **kw)
        return True
    except NodeExistsError:
        return False
