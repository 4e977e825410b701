"""API tokens kept in ZooKeeper, shared by every service worker and replica.

A token is 32 random bytes (URL-safe base64); ZooKeeper holds only its
SHA-256, so reading the tree does not reveal tokens. The API manages them
(``/v1/tokens``, admin role; ``cowfleet token``); ``cowfleet token create
--zk`` calls this module directly to bootstrap the first admin token of a
cluster. The service also accepts a token file (see service/auth.py).

Names are unique: a create reads the tokens folder's version, checks the
name is free and writes the new token in one transaction that also bumps
that version, so of two concurrent creates of one name only one commits.
"""
from __future__ import annotations

import hashlib
import secrets

from kazoo.exceptions import BadVersionError, NoNodeError

from cowfleet.models import ApiToken
from cowfleet.zk import layout
from cowfleet.zk.connection import commit, read

ROLES = ("admin", "reader")
ATTEMPTS = 10


class TokenExists(ValueError):
    pass


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(zk, name: str, role: str, expires_at: float | None = None) -> tuple[str, ApiToken]:
    """Store a new token; returns (the token -- the only time it is seen, its record).
    The caller has checked the name (a DNS label: the API's rule)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    zk.ensure_path(layout.TOKENS)
    for _ in range(ATTEMPTS):
        version = zk.exists(layout.TOKENS).version
        if find(zk, name) is not None:
            raise TokenExists(f"a token named '{name}' exists; delete it first")
        token = secrets.token_urlsafe(32)
        record = ApiToken(name=name, role=role, expires_at=expires_at)
        tx = zk.transaction()
        tx.set_data(layout.TOKENS, b"", version=version)      # the names-are-unique guard
        tx.create(layout.token(digest(token)), record.to_bytes())
        try:
            commit(tx)
        except BadVersionError:
            continue                                          # another create won: look again
        return token, record
    raise RuntimeError("too many concurrent token writers; retry")


def list_(zk) -> list[tuple[ApiToken, int, str]]:
    """(record, znode version, digest) of every token, by name."""
    try:
        digests = zk.get_children(layout.TOKENS)
    except NoNodeError:
        return []
    out = []
    for d in digests:
        got = read(zk, layout.token(d), ApiToken)
        if got is not None:
            out.append((got[0], got[1], d))
    return sorted(out, key=lambda pair: pair[0].name)


def find(zk, name: str) -> tuple[ApiToken, int, str] | None:
    return next((entry for entry in list_(zk) if entry[0].name == name), None)


def revoke(zk, name: str) -> int:
    """Delete the tokens named ``name``; returns how many went."""
    gone = 0
    for t, _, d in list_(zk):
        if t.name == name:
            try:
                zk.delete(layout.token(d))
                gone += 1
            except NoNodeError:
                pass
    return gone
