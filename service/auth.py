"""Bearer-token authentication with two roles: ``admin`` (all) and ``reader`` (GET).

Tokens come from two places, both optional:
- a file, one ``TOKEN ROLE`` pair a line (``#`` comments), re-read when it
  changes, so tokens rotate without a restart;
- ZooKeeper (``cowfleet token add``): shared by every worker and replica,
  stored as SHA-256 digests only, mirrored in each worker by a TreeCache.
"""
from __future__ import annotations

import hmac
import os
import threading
from typing import Callable

from kazoo.exceptions import NoNodeError

from cowfleet import tokens as zk_tokens
from cowfleet.models import ApiToken
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
    valid token is never refused for being early."""

    def __init__(self, get_zk: Callable):
        self._get_zk = get_zk
        self._folder = FolderCache(layout.TOKENS)

    def role_of(self, token: str) -> str | None:
        zk = self._get_zk()
        cache = self._folder.loaded(zk)
        path = layout.token(zk_tokens.digest(token))
        if cache is not None:
            node = cache.get_data(path)
            data = node.data if node is not None else None
        else:
            try:
                data, _ = zk.get(path)
            except NoNodeError:
                data = None
        if not data:
            return None
        role = ApiToken.from_bytes(data).role
        return role if role in ROLES else None


def allowed(role: str, method: str) -> bool:
    return role == "admin" or (role == "reader" and method in READ_METHODS)
