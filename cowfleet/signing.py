"""What the cluster secret (``cowfleet.config.cluster_secret``) keys: the
ZooKeeper digest identity and the signature of every P2P request.

Each use gets its own key, derived from the secret with HMAC-SHA256 (a key
for one purpose is useless for the other: the ZooKeeper password, which
ZooKeeper keeps as a SHA-1 digest in every ACL, cannot sign a request).

A P2P request carries four headers::

    X-Cowfleet-Date            unix seconds when it was signed
    X-Cowfleet-Nonce           128 random bits, never accepted twice
    X-Cowfleet-Content-Sha256  sha256 of the body (hex), or UNSIGNED-PAYLOAD
    Authorization              CowfleetP2P <hex HMAC-SHA256 of the string below>

signed over method, path (+ query), date, nonce, content digest and the
declared ``X-Checksum-Sha256`` of an upload, one per line. The receiver
(``Verifier``) refuses a request outside the replay window (``WINDOW``
seconds either side of its clock: nodes keep their clocks within that, NTP),
a nonce it saw in the window, a signature that does not match, and a body
whose digest is not the signed one.

Streamed bodies -- an image upload the service forwards to a storage agent
as it reads it from its client -- are signed UNSIGNED-PAYLOAD: the service
cannot know an upload's digest before its last byte, and buffering a
multi-GiB image to learn it would cost a disk copy and the upload's latency.
What protects those bytes instead: the signature still covers the method,
the path, the time, a single-use nonce and the declared checksum (the storage
agent refuses bytes that do not match it), image data is immutable once
stored, and every copy is checked against the image's recorded sha256 when
replicated. Only routes declared streamed accept UNSIGNED-PAYLOAD.

Written with the stdlib's ``hmac``: no well-kept library signs requests in
this shape for a requests client and a werkzeug server (requests-auth's and
the AWS SigV4 packages are tied to their services' canonical forms and key
scopes); the whole scheme is this module. Mutual TLS would have needed a
cluster CA, certificate issuing and rotation on every node: the secret the
cluster already distributes does the job (docs/design.md, "A closed cluster").
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import urllib.parse
from typing import Callable, Mapping

from requests.auth import AuthBase
from requests.models import PreparedRequest

DATE = "X-Cowfleet-Date"
NONCE = "X-Cowfleet-Nonce"
CONTENT = "X-Cowfleet-Content-Sha256"
CHECKSUM = "X-Checksum-Sha256"        # an upload's declared sha256 (the API's header, forwarded)
SCHEME = "CowfleetP2P"
UNSIGNED = "UNSIGNED-PAYLOAD"
WINDOW = 60.0                         # seconds either side of the receiver's clock
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ZK_USER = "cowfleet"


def derive(secret: bytes, purpose: str) -> bytes:
    """The key for one ``purpose``: HMAC-SHA256(secret, "cowfleet " + purpose)."""
    return hmac.new(secret, b"cowfleet " + purpose.encode(), hashlib.sha256).digest()


def zk_credentials(secret: bytes) -> tuple[str, str]:
    """(user, password) of the cluster's ZooKeeper digest identity."""
    return ZK_USER, derive(secret, "zookeeper digest").hex()


def p2p_key(secret: bytes) -> bytes:
    return derive(secret, "p2p request")


def canonical(method: str, path: str, date: str, nonce: str, content: str, checksum: str) -> bytes:
    return "\n".join((method.upper(), path, date, nonce, content, checksum)).encode()


def canonical_path(path: str, query: str) -> str:
    """The path as the server's router sees it (percent-decoded) and the raw query."""
    return urllib.parse.unquote(path) + ("?" + query if query else "")


def signature(key: bytes, method: str, path: str, date: str, nonce: str, content: str, checksum: str) -> str:
    return hmac.new(key, canonical(method, path, date, nonce, content, checksum), hashlib.sha256).hexdigest()


def sign_headers(key: bytes, method: str, path: str, content: str, checksum: str = "",
                 now: float | None = None) -> dict[str, str]:
    """The headers that authenticate one request (``path`` canonical, ``content``
    the body's sha256 hex or UNSIGNED)."""
    date = str(int(now if now is not None else time.time()))
    nonce = secrets.token_hex(16)
    sig = signature(key, method, path, date, nonce, content, checksum)
    return {DATE: date, NONCE: nonce, CONTENT: content, "Authorization": f"{SCHEME} {sig}"}


class P2PAuth(AuthBase):
    """requests' hook that signs each request as it is sent. ``secret`` is
    asked on every request (None: sent unsigned, an open cluster), so a
    long-lived session follows the configuration."""

    def __init__(self, secret: Callable[[], bytes | None]):
        self._secret = secret
        self._key: tuple[bytes, bytes] | None = None     # (secret, its P2P key): derived once

    def headers(self, method: str, path: str, query: str, content: str, checksum: str = "") -> dict[str, str]:
        """The headers that sign a request to ``path`` (as sent) and ``query``
        whose body's digest is ``content``: none without a secret."""
        secret = self._secret()
        if secret is None:
            return {}
        key = self._key
        if key is None or key[0] != secret:
            key = self._key = (secret, p2p_key(secret))
        return sign_headers(key[1], method, canonical_path(path, query), content, checksum)

    def __call__(self, r: PreparedRequest) -> PreparedRequest:
        body = r.body
        if body is None:
            content = EMPTY_SHA256
        elif isinstance(body, (bytes, str)):
            content = hashlib.sha256(body.encode() if isinstance(body, str) else body).hexdigest()
        else:                       # a generator or a file: streamed (see the module's docstring)
            content = UNSIGNED
        split = urllib.parse.urlsplit(r.path_url)
        r.headers.update(self.headers(r.method, split.path, split.query, content, r.headers.get(CHECKSUM, "")))
        return r


class Refused(Exception):
    """Why a request is not authentic: ``status`` 401 (no credentials) or 403."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class Verifier:
    """The receiving side: ``check`` raises :class:`Refused` unless a request
    is signed with the cluster's key, in the window, and new."""

    def __init__(self, secret: bytes, window: float = WINDOW, clock: Callable[[], float] = time.time):
        self.key = p2p_key(secret)
        self.window = window
        self.clock = clock
        # the nonces seen live in this process only: a restarted receiver
        # refuses what was signed before it started, or a request captured in
        # the minute before a restart could be replayed to it once. (Callers
        # re-sign on retry; a caller whose clock lags by d seconds is refused
        # for d seconds after a restart.)
        self.started = int(clock())
        self._seen: dict[str, float] = {}     # nonce -> when it leaves the window
        self._lock = threading.Lock()
        self._prune_at = 1024

    def check(self, method: str, path: str, headers: Mapping[str, str], body: Callable[[], bytes],
              streamed: bool = False) -> None:
        """``path`` canonical; ``body()`` reads the body, asked only once the
        signature holds (a stranger cannot make the server buffer anything);
        ``streamed``: the route takes UNSIGNED-PAYLOAD and its body is not read."""
        auth = headers.get("Authorization", "")
        date, nonce, content = headers.get(DATE), headers.get(NONCE), headers.get(CONTENT)
        if not auth.startswith(SCHEME + " ") or not (date and nonce and content):
            raise Refused(401, f"unsigned request: P2P requests carry a {SCHEME} signature "
                          "made with the cluster secret")
        try:
            when = int(date)
        except ValueError:
            raise Refused(401, f"{DATE} is not unix seconds") from None
        now = self.clock()
        if abs(now - when) > self.window:
            raise Refused(403, f"stale request: signed {now - when:+.0f} s from this node's clock "
                          f"(the window is {self.window:.0f} s)")
        if when < self.started:
            raise Refused(403, "stale request: signed before this node started")
        want = signature(self.key, method, path, date, nonce, content, headers.get(CHECKSUM, ""))
        if not hmac.compare_digest(want, auth[len(SCHEME) + 1:].strip()):
            raise Refused(403, "bad signature: not signed with this cluster's secret, or altered on the way")
        if content == UNSIGNED:
            if not streamed:
                raise Refused(403, f"{UNSIGNED} is for streamed image data only")
        elif not streamed and not hmac.compare_digest(hashlib.sha256(body()).hexdigest(), content):
            raise Refused(403, "the body is not the one signed")
        with self._lock:
            if self._seen.get(nonce, 0) > now:
                raise Refused(403, "replayed request: this nonce was used already")
            if len(self._seen) > self._prune_at:      # amortised: the size at most doubles between prunes
                self._seen = {n: t for n, t in self._seen.items() if t > now}
                self._prune_at = max(1024, 2 * len(self._seen))
            # kept until its date leaves the window: later it is stale anyway
            self._seen[nonce] = when + self.window + 1
