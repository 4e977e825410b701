"""Bearer-token authentication with two roles: ``admin`` (all) and ``reader``
(GET, except ``ADMIN_ONLY`` paths).

Tokens come from two places, both optional:
- a file, one ``TOKEN ROLE`` pair a line (``#`` comments), re-read when it
  changes, so tokens rotate without a restart;
- ZooKeeper (``/v1/tokens``, ``cowfleet token create``): shared by every worker and replica,
  stored as SHA-256 digests only, mirrored in each worker by a TreeCache.
"""
from __future__ import annotations

import hmac
import os
import threading
from typing import Callable

from kazoo.exceptions import NoNodeError

from cowfleet import tokens as zk_tokens
from cowfleet.models import ApiToken, now
from cowfleet.service.mirror import FolderCache
from cowfleet.zk import layout

ROLES = zk_tokens.ROLES
READ_METHODS = ("GET", "HEAD", "OPTIONS")


class TokenStore:
    def __init__(self, path: str | None):
        self.path = path
        self._tokens: list[tuple[bytes, str]] = []
        self._mtime: float | None = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        if not self.path:
            return
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            self._tokens, self._mtime = [], None
            return
        if mtime == self._mtime:
            return
        tokens = []
        with open(self.path) as fh:
            for line in fh:
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                token, *rest = line.split()
                role = rest[0] if rest else "reader"
                if role in ROLES:
                    tokens.append((token.encode(), role))
        self._tokens, self._mtime = tokens, mtime

    def role_of(self, token: str) -> str | None:
        with self._lock:
            self._load()
            tokens = list(self._tokens)
        found = None
        given = token.encode()
        # compare against every token, in constant time each, never stopping early
        for known, role in tokens:
            if hmac.compare_digest(known, given) and found is None:
                found = role
        return found


class ZooKeeperTokens:
    """Tokens under /cowfleet/config/tokens. Looked up by the token's digest
    in a TreeCache (no ZooKeeper round trip per request); until the cache has
    loaded -- just after a worker starts -- ZooKeeper is read directly, so a
    valid token is never refused for being early.

    An expired token is not valid. ``last_used`` is written at most once every
    ``LAST_USED_EVERY`` seconds a token (per worker), asynchronously and
    version-guarded: a request never waits for it, and a token revoked
    meanwhile is not written back."""

    LAST_USED_EVERY = 60.0

    def __init__(self, get_zk: Callable):
        self._get_zk = get_zk
        self._folder = FolderCache(layout.TOKENS)

    def role_of(self, token: str) -> str | None:
        zk = self._get_zk()
        cache = self._folder.loaded(zk)
        path = layout.token(zk_tokens.digest(token))
        if cache is not None:
            node = cache.get_data(path)
            data, stat = (node.data, node.stat) if node is not None else (None, None)
        else:
            try:
                data, stat = zk.get(path)
            except NoNodeError:
                data, stat = None, None
        if not data:
            return None
        record = ApiToken.from_bytes(data)
        at = now()
        if record.role not in ROLES or record.expired(at):
            return None
        if record.last_used is None or at - record.last_used >= self.LAST_USED_EVERY:
            record.last_used = at
            zk.set_async(path, record.to_bytes(), version=stat.version)   # a lost race is no matter
        return record.role


# paths only the admin role may use, reads too: the token list says who may do what
ADMIN_ONLY = ("/v1/tokens",)


def allowed(role: str, method: str, path: str = "") -> bool:
    if role == "admin":
        return True
    admin_only = any(path == p or path.startswith(p + "/") for p in ADMIN_ONLY)
    return role == "reader" and method in READ_METHODS and not admin_only
