"""Opening a ZooKeeper session the same way everywhere.

The connection string lists every server of the ensemble (kazoo moves to
another one when its server dies) and may end in a chroot (``/cluster-a``),
which isolates clusters and tests from one another.
"""
from __future__ import annotations

import json
import logging
from typing import Callable, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError, NodeExistsError, RolledBackError
from kazoo.retry import KazooRetry

from cowfleet.models import Record
from cowfleet.zk import layout

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)


def split_chroot(hosts: str) -> tuple[str, str | None]:
    if "/" in hosts:
        servers, chroot = hosts.split("/", 1)
        return servers, "/" + chroot.strip("/") if chroot.strip("/") else None
    return hosts, None


def connect(hosts: str, timeout: float = 15.0, listener: Callable | None = None) -> KazooClient:
    """Start a session; create the chroot and the top-level layout if missing."""
    servers, chroot = split_chroot(hosts)
    if chroot:
        # kazoo does not create its chroot; a short plain session does.
        boot = KazooClient(hosts=servers, timeout=timeout)
        boot.start(timeout=timeout)
        try:
            boot.ensure_path(chroot)
        finally:
            boot.stop()
            boot.close()
    zk = KazooClient(hosts=hosts, timeout=timeout,
                     connection_retry=KazooRetry(max_tries=-1, max_delay=2),
                     command_retry=KazooRetry(max_tries=5, max_delay=1))
    if listener:
        zk.add_listener(listener)
    zk.start(timeout=timeout)
    for path in layout.TOP_LEVEL:
        zk.ensure_path(path)
    return zk


def read(zk: KazooClient, path: str, cls: type[R]) -> tuple[R, int] | None:
    """The record at ``path`` and its znode version, or None if absent."""
    try:
        data, stat = zk.get(path)
    except NoNodeError:
        return None
    return cls.from_bytes(data), stat.version


def read_children(zk: KazooClient, path: str, cls: type[R]) -> list[tuple[R, int]]:
    """All child records of ``path`` (children vanishing meanwhile are skipped)."""
    try:
        names = zk.get_children(path)
    except NoNodeError:
        return []
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
    for _ in range(tries):
        got = read(zk, path, cls)
        if got is None:
            return None
        rec, version = got
        new = change(rec)
        if new is None:
            return None
        try:
            zk.set(path, new.to_bytes(), version=version)
            return new
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
