"""The HTTP client shared by the CLI, the Terraform shim and the tests.

Retries with backoff on connection errors and 502/503/504 (every method it
retries is idempotent in the API: PUT, GET, DELETE, PATCH with If-Match);
raises ``ApiError`` carrying the problem+json body otherwise.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError
from urllib3.util.retry import Retry

from cowfleet.checksum import file_sha256
from cowfleet.config import lab_env_file
from cowfleet.protocol import ProblemType


def _problem(resp: requests.Response) -> dict:
    try:
        problem = resp.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": resp.reason, "detail": resp.text[:200]}
    return problem


class _ProgressReader:
    """A file-like body with a length (so requests sends Content-Length, not
    chunks) that reports progress as it is read."""

    def __init__(self, fh, size: int, progress: Callable[[int, int], None] | None):
        self.fh, self.size, self.progress, self.sent = fh, size, progress, 0

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n if n and n > 0 else 1 << 20)
        self.sent += len(data)
        if self.progress:
            self.progress(self.sent, self.size)
        return data


def _field_errors(errors, prefix: str = "") -> list[tuple[str, str]]:
    """problem+json ``errors`` as (dotted field, message) pairs, nested
    objects flattened (``{"placement": {"strategy": [...]}}`` is
    ``placement.strategy``)."""
    if isinstance(errors, dict):
        return [pair for k, v in errors.items() for pair in _field_errors(v, f"{prefix}{k}.")]
    if isinstance(errors, list) and all(isinstance(m, str) for m in errors):
        return [(prefix.rstrip("."), m) for m in errors]
    if isinstance(errors, list):
        return [pair for i, v in enumerate(errors) for pair in _field_errors(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), str(errors))]


class ApiError(Exception):
    """An error answer: its status, its problem+json body; as a string, one
    line: the status, the detail and each field's errors (a message that
    repeats the detail is not said twice). Branch on ``type`` (a
    ``cowfleet.protocol.ProblemType``), never on the title or detail, which
    are for people."""

    def __init__(self, status: int, problem: dict, resent: bool = False):
        self.status = status
        self.problem = problem
        # this answer is to a resend: an earlier attempt went out and its answer
        # was lost (connection dropped or timed out), so it may have been carried out
        self.resent = resent
        self.type = problem.get("type") or ProblemType.BLANK
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        fields = [f"{k}: {m}" if k else m for k, m in _field_errors(problem.get("errors") or {})
                  if m != detail]
        if fields:
            detail += " (" + "; ".join(fields) + ")"
        super().__init__(f"{status} {' '.join(detail.split())}")


def _resent(resp: requests.Response) -> bool:
    """Was this request sent again after an attempt that went out but whose
    answer was lost? (urllib3's retry history: a read error or a dropped
    connection, not a refused or timed-out connect, which sent nothing.) A
    create-only PUT answered 412 then may have been refused by its own
    first attempt's object."""
    history = getattr(getattr(resp.raw, "retries", None), "history", ()) or ()
    return any(h.error is not None and not isinstance(h.error, ConnectTimeoutError) for h in history)


class ConfigError(Exception):
    """No endpoint or token, or one that cannot be used: ``field`` names
    which (``endpoint`` or ``token``), ``missing`` whether it was not given
    at all, so callers (the provider's diagnostics) branch on these, not on
    the message."""

    def __init__(self, message: str, field: str, missing: bool = True):
        super().__init__(message)
        self.field, self.missing = field, missing


def setting(key: str) -> str | None:
    """``key`` from the environment, else from the lab's env file."""
    if os.environ.get(key):
        return os.environ[key]
    path = lab_env_file()
    if path.exists():
        for line in path.read_text().splitlines():
            k, _, value = line.partition("=")
            if k == key and value.strip():
                return value.strip()
    return None


def load_config(endpoint: str | None = None, token: str | None = None) -> tuple[str, str]:
    """Endpoint and token: arguments, then the environment, then the lab's env file."""
    endpoint = endpoint or setting("COWFLEET_ENDPOINT")
    token = token or setting("COWFLEET_TOKEN")
    if not endpoint:
        raise ConfigError("no endpoint: set COWFLEET_ENDPOINT or run 'cowfleet lab up'", "endpoint")
    if not token:
        raise ConfigError("no token: set COWFLEET_TOKEN or run 'cowfleet lab up'", "token")
    return check_endpoint(endpoint), token


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` without a trailing slash; ConfigError if it is not an http(s) URL."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint '{endpoint}' is not an http:// or https:// URL "
                          "(e.g. http://127.0.0.1:8080)", "endpoint", missing=False)
    return endpoint.rstrip("/")


def _create_only(yes: bool) -> dict | None:
    """``If-None-Match: *``: the PUT creates or fails with 412, never updates
    an object that is already there (Terraform's create must not take one over)."""
    return {"If-None-Match": "*"} if yes else None


def seg(name: str) -> str:
    """A name as one URL path segment, escaped ("." too), so that "../flavors/x"
    or "a/b" never address another object (the service answers 404 or 422)."""
    return quote(str(name), safe="").replace(".", "%2E")


class Client:
    def __init__(self, endpoint: str | None = None, token: str | None = None, timeout: float = 30,
                 retries: int = 4, retry_status: bool = True, user_agent: str | None = None):
        """``retries``: connection failures (and, with ``retry_status``, 502/503/504
        answers) are retried that many times, backed off; tests turn the
        status retries off, so a 503 a user would see fails them.
        ``user_agent`` names the program in every request (the Terraform
        provider and its version); else requests' own."""
        self.endpoint, self.token = load_config(endpoint, token)
        self.timeout = timeout
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=retries, backoff_factor=0.2,
                      status_forcelist=(502, 503, 504) if retry_status else (),
                      allowed_methods=frozenset({"GET", "PUT", "DELETE", "HEAD", "PATCH"}),
                      raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=32))
        self.session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=32))
        self.session.headers["Authorization"] = f"Bearer {self.token}"
        if user_agent:
            self.session.headers["User-Agent"] = user_agent

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None,
                ok_404: bool = False) -> requests.Response:
        resp = self.session.request(method, f"{self.endpoint}{path}", json=body, headers=headers,
                                    timeout=self.timeout)
        if resp.status_code == 404 and ok_404:
            return resp
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, _problem(resp), resent=_resent(resp))
        return resp

    def get_or_none(self, path: str) -> dict | None:
        """GET an object; None when it does not exist (404)."""
        resp = self.request("GET", path, ok_404=True)
        return None if resp.status_code == 404 else resp.json()

    # -- resources --------------------------------------------------------------
    def put_image(self, name: str, *, create_only: bool = False, **spec) -> dict:
        return self.request("PUT", f"/v1/images/{seg(name)}", spec, headers=_create_only(create_only)).json()

    def get_image(self, name: str) -> dict | None:
        return self.get_or_none(f"/v1/images/{seg(name)}")

    def delete_image(self, name: str) -> None:
        self.request("DELETE", f"/v1/images/{seg(name)}", ok_404=True)

    def list_all(self, path: str, page_size: int | None = None) -> list[dict]:
        """Every item of a paginated list, following ``Link: rel="next"``."""
        url = f"{path}?limit={page_size}" if page_size else path
        items: list[dict] = []
        while url:
            resp = self.request("GET", url)
            items.extend(resp.json())
            nxt = resp.links.get("next", {}).get("url")
            url = nxt[len(self.endpoint):] if nxt and nxt.startswith(self.endpoint) else nxt
        return items

    def list_images(self) -> list[dict]:
        return self.list_all("/v1/images")

    def upload_image(self, name: str, path: str | os.PathLike, sha256: str | None = None,
                     progress: Callable[[int, int], None] | None = None, retries: int = 3) -> dict:
        """Stream a file to ``PUT /v1/images/NAME/data``; its SHA-256 (computed
        here unless given) travels along, so a corrupted transfer stores nothing.

        Not retried by the session's adapter (it would resend from where the
        file stopped): the file is rewound and sent again on 429/503/connection errors.
        """
        path = Path(path)
        sha256 = sha256 or file_sha256(path)
        size = path.stat().st_size
        headers = {"Content-Type": "application/octet-stream", "X-Checksum-Sha256": sha256,
                   "Authorization": f"Bearer {self.token}", "User-Agent": self.session.headers["User-Agent"]}
        url = f"{self.endpoint}/v1/images/{seg(name)}/data"
        for attempt in range(retries + 1):
            with open(path, "rb") as fh:
                body = _ProgressReader(fh, size, progress)
                try:
                    resp = requests.put(url, data=body, headers=headers, timeout=(10, 600))
                except requests.ConnectionError:
                    if attempt == retries:
                        raise
                    time.sleep(0.5 * 2 ** attempt)
                    continue
            # 429: the service's upload slots are taken (too-many-uploads), 503: retry
            if resp.status_code in (429, 503) and attempt < retries:
                time.sleep(0.5 * 2 ** attempt)
                continue
            if resp.status_code >= 400:
                raise ApiError(resp.status_code, _problem(resp))
            return resp.json()
        raise AssertionError("unreachable")

    def put_flavor(self, name: str, *, create_only: bool = False, **spec) -> dict:
        return self.request("PUT", f"/v1/flavors/{seg(name)}", spec, headers=_create_only(create_only)).json()

    def get_flavor(self, name: str) -> dict | None:
        return self.get_or_none(f"/v1/flavors/{seg(name)}")

    def delete_flavor(self, name: str) -> None:
        self.request("DELETE", f"/v1/flavors/{seg(name)}", ok_404=True)

    def put_group(self, name: str, *, create_only: bool = False, **spec) -> dict:
        return self.request("PUT", f"/v1/instance-groups/{seg(name)}", spec, headers=_create_only(create_only)).json()

    def get_group(self, name: str) -> dict | None:
        return self.get_or_none(f"/v1/instance-groups/{seg(name)}")

    def list_groups(self) -> list[dict]:
        return self.list_all("/v1/instance-groups")

    def delete_group(self, name: str) -> None:
        self.request("DELETE", f"/v1/instance-groups/{seg(name)}", ok_404=True)

    def group_events(self, name: str, after: str | None = None, limit: int | None = None) -> list[dict] | None:
        """A group's recent events, oldest first: the newest ``limit`` (the
        service's default when None), or the first ``limit`` after the event
        id ``after``; None when the group does not exist."""
        params = [(k, v) for k, v in (("after", after), ("limit", limit)) if v is not None]
        query = ("?" + "&".join(f"{k}={v}" for k, v in params)) if params else ""
        return self.get_or_none(f"/v1/instance-groups/{seg(name)}/events{query}")

    def patch_group(self, name: str, patch: dict) -> dict:
        """JSON merge patch of a group's spec (``{"size": 5}``)."""
        return self.request("PATCH", f"/v1/instance-groups/{seg(name)}", patch,
                            headers={"Content-Type": "application/merge-patch+json"}).json()

    def list_flavors(self) -> list[dict]:
        return self.list_all("/v1/flavors")

    def list_tokens(self) -> list[dict]:
        return self.list_all("/v1/tokens")

    def get_token(self, name: str) -> dict | None:
        return self.get_or_none(f"/v1/tokens/{seg(name)}")

    def create_token(self, name: str, **spec) -> dict:
        """A new token: the answer's ``token`` is the secret, shown this once."""
        return self.request("PUT", f"/v1/tokens/{seg(name)}", spec).json()

    def delete_token(self, name: str) -> None:
        self.request("DELETE", f"/v1/tokens/{seg(name)}")

    def nodes(self) -> list[dict]:
        return self.list_all("/v1/nodes")

    def console(self, group: str, instance_id: str, tail_bytes: int | None = None) -> tuple[str, int]:
        """(the tail of the instance's serial console, the console's whole size)."""
        query = f"?tail_bytes={int(tail_bytes)}" if tail_bytes is not None else ""
        resp = self.request("GET", f"/v1/instance-groups/{seg(group)}/instances/{seg(instance_id)}/console{query}")
        return resp.text, int(resp.headers.get("X-Console-Size", len(resp.content)))

    def network(self) -> dict:
        return self.request("GET", "/v1/network").json()

    def put_network(self, **spec) -> dict:
        return self.request("PUT", "/v1/network", spec).json()

    def remove_node(self, name: str) -> None:
        self.request("DELETE", f"/v1/nodes/{seg(name)}")
