"""The create-or-update loop that PUT on images and flavors share.

Without ``If-Match`` a lost race (the znode appeared, or changed, between
our read and our write) is not the client's problem: the record is read
again and the write retried, up to ``ATTEMPTS`` times. With ``If-Match`` the
client asked for exactly one version, so a lost race is 412.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from kazoo.exceptions import BadVersionError, NodeExistsError

from cowfleet.service.problems import Problem
from cowfleet.zk.connection import read

R = TypeVar("R")
ATTEMPTS = 10


def precondition_failed(detail: str) -> Problem:
    return Problem(412, "Precondition Failed", detail)


def create_or_update(zk, path: str, cls: type[R], label: str, expected: int | None,
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
            if expected is not None:
                raise precondition_failed(f"{label} does not exist")
            try:
                return create(), 0, True
            except NodeExistsError:
                continue
        current, version = got
        if expected is not None and expected != version:
            raise precondition_failed(f"{label} is at version {version}, not {expected}")
        new = update(current)
        if new is None:
            return current, version, False
        try:
            stat = zk.set(path, new.to_bytes(), version=version)
        except BadVersionError:
            if expected is not None:
                raise precondition_failed(f"{label} changed meanwhile")
            continue
        return new, stat.version, False
    raise Problem(503, "Service Unavailable", "too many concurrent writers; retry")
