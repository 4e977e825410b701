"""Bearer-token authentication with two roles: ``admin`` (all) and ``reader`` (GET).

Tokens come from a file, one ``TOKEN ROLE`` pair a line (``#`` comments).
The file is re-read when it changes, so tokens rotate without a restart.
"""
from __future__ import annotations

import hmac
import os
import threading

ROLES = ("admin", "reader")
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


def allowed(role: str, method: str) -> bool:
    return role == "admin" or (role == "reader" and method in READ_METHODS)
