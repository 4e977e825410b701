"""API tokens kept in ZooKeeper, shared by every service worker and replica.

A token is 32 random bytes (URL-safe base64); ZooKeeper holds only its
SHA-256, so reading the tree does not reveal tokens. ``cowfleet token``
manages them; the service also accepts a token file (see service/auth.py).
"""
from __future__ import annotations

import hashlib
import secrets

from kazoo.exceptions import NoNodeError

from cowfleet.models import ApiToken
from cowfleet.zk import layout
from cowfleet.zk.connection import read

ROLES = ("admin", "reader")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(zk, name: str, role: str) -> str:
    """Store a new token; returns the token (the only time it is seen)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if any(t.name == name for t, _ in list_(zk)):
        raise ValueError(f"a token named '{name}' exists; revoke it first")
    token = secrets.token_urlsafe(32)
    zk.create(layout.token(digest(token)), ApiToken(name=name, role=role).to_bytes(), makepath=True)
    return token


def list_(zk) -> list[tuple[ApiToken, str]]:
    """(record, digest) pairs, by name."""
    try:
        digests = zk.get_children(layout.TOKENS)
    except NoNodeError:
        return []
    out = []
    for d in digests:
        got = read(zk, layout.token(d), ApiToken)
        if got is not None:
            out.append((got[0], d))
    return sorted(out, key=lambda pair: pair[0].name)


def revoke(zk, name: str) -> int:
    """Delete the tokens named ``name``; returns how many went."""
    gone = 0
    for t, d in list_(zk):
        if t.name == name:
            try:
                zk.delete(layout.token(d))
                gone += 1
            except NoNodeError:
                pass
    return gone
