"""The HTTP client shared by the CLI, the Terraform shim and the tests.

Retries with backoff on connection errors and 502/503/504 (every method it
retries is idempotent in the API: PUT, GET, DELETE, PATCH with If-Match);
raises ``ApiError`` carrying the problem+json body otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


class ApiError(Exception):
    def __init__(self, status: int, problem: dict):
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        errors = problem.get("errors")
        if errors:
            detail += ": " + "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                                       for k, v in errors.items())
        super().__init__(f"{status} {detail}")


def _problem(resp: requests.Response) -> dict:
    try:
        return resp.json()
    except ValueError:
        return {"title": resp.reason, "detail": resp.text[:200]}


class ConfigError(Exception):
    pass


def lab_env_file() -> Path:
    from cowfleet.lab.lab import default_dir
    return default_dir() / "env"


def load_config(endpoint: str | None = None, token: str | None = None) -> tuple[str, str]:
    """Endpoint and token: arguments, then the environment, then the lab's env file."""
    endpoint = endpoint or os.environ.get("COWFLEET_ENDPOINT")
    token = token or os.environ.get("COWFLEET_TOKEN")
    if not (endpoint and token):
        path = lab_env_file()
        if path.exists():
            for line in path.read_text().splitlines():
                key, _, value = line.partition("=")
                if key == "COWFLEET_ENDPOINT" and not endpoint:
                    endpoint = value.strip()
                if key == "COWFLEET_TOKEN" and not token:
                    token = value.strip()
    if not endpoint:
        raise ConfigError("no endpoint: set COWFLEET_ENDPOINT or run 'cowfleet lab up'")
    if not token:
        raise ConfigError("no token: set COWFLEET_TOKEN or run 'cowfleet lab up'")
    return endpoint.rstrip("/"), token


class Client:
    def __init__(self, endpoint: str | None = None, token: str | None = None, timeout: float = 30,
                 retries: int = 4):
        self.endpoint, self.token = load_config(endpoint, token)
        self.timeout = timeout
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=retries, backoff_factor=0.2,
                      status_forcelist=(502, 503, 504),
                      allowed_methods=frozenset({"GET", "PUT", "DELETE", "HEAD", "PATCH"}),
                      raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=32))
        self.session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=32))
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None,
                ok_404: bool = False) -> requests.Response:
        resp = self.session.request(method, f"{self.endpoint}{path}", json=body, headers=headers,
                                    timeout=self.timeout)
        if resp.status_code == 404 and ok_404:
            return resp
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, _problem(resp))
        return resp

    def get_or_none(self, path: str) -> dict | None:
        """GET an object; None when it does not exist (404)."""
        resp = self.request("GET", path, ok_404=True)
        return None if resp.status_code == 404 else resp.json()

    # -- resources --------------------------------------------------------------
    def put_image(self, name: str, **spec) -> dict:
        return self.request("PUT", f"/v1/images/{name}", spec).json()

    def get_image(self, name: str) -> dict | None:
        return self.get_or_none(f"/v1/images/{name}")

    def delete_image(self, name: str) -> None:
        self.request("DELETE", f"/v1/images/{name}", ok_404=True)

    def upload_image_data(self, name: str, path: str | os.PathLike, sha256: str | None = None) -> dict:
        """Stream a local file as the image's bytes: ``PUT /v1/images/{name}/data``
        (raw body, ``application/octet-stream``, optional ``X-Checksum-Sha256``;
        the contract of issue 3). Not retried: the body is a stream."""
        headers = {"Content-Type": "application/octet-stream"}
        if sha256:
            headers["X-Checksum-Sha256"] = sha256
        with open(path, "rb") as body:
            resp = requests.put(f"{self.endpoint}/v1/images/{name}/data", data=body, timeout=self.timeout,
                                headers={**headers, "Authorization": f"Bearer {self.token}"})
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, _problem(resp))
        return resp.json() if resp.content else {}

    def put_flavor(self, name: str, **spec) -> dict:
        return self.request("PUT", f"/v1/flavors/{name}", spec).json()

    def get_flavor(self, name: str) -> dict | None:
        return self.get_or_none(f"/v1/flavors/{name}")

    def delete_flavor(self, name: str) -> None:
        self.request("DELETE", f"/v1/flavors/{name}", ok_404=True)

    def put_group(self, name: str, **spec) -> dict:
        return self.request("PUT", f"/v1/instance-groups/{name}", spec).json()

    def get_group(self, name: str) -> dict | None:
        return self.get_or_none(f"/v1/instance-groups/{name}")

    def list_groups(self) -> list[dict]:
        return self.request("GET", "/v1/instance-groups").json()

    def delete_group(self, name: str) -> None:
        self.request("DELETE", f"/v1/instance-groups/{name}", ok_404=True)

    def nodes(self) -> list[dict]:
        return self.request("GET", "/v1/nodes").json()
