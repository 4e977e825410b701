"""PUT /v1/images/{name}/data: bytes streamed through the service to a
storage node, checksum-verified, then replicated peer to peer."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import requests

from cowfleet.agents.storage import tgt
from cowfleet.client import ApiError
from cowfleet.lab import components as c
from tests.conftest import _workdir
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

OCTET = {"Content-Type": "application/octet-stream"}


def _put_data(lab, name, data, headers=None):
    h = dict(OCTET, Authorization=f"Bearer {lab.state.token}", **(headers or {}))
    return requests.put(f"{lab.state.endpoint}/v1/images/{name}/data", data=data, headers=h, timeout=60)


@pytest.fixture
def payload(tmp_path_factory):
    d = _workdir("cowfleet-upload-")
    path = d / "blob.raw"
    path.write_bytes(os.urandom(3 << 20) + b"cowfleet")
    yield path
    path.unlink(missing_ok=True)
    d.rmdir()


def _cleanup(client, *names):
    for n in names:
        client.delete_image(n)


def test_upload_stores_verifies_and_is_idempotent(client, lab, payload):
    sha = hashlib.sha256(payload.read_bytes()).hexdigest()
    client.put_image("up-one", format="raw", min_replicas=1)
    try:
        img = client.upload_image("up-one", payload)
        assert img["sha256"] == sha
        assert img["size_bytes"] == payload.stat().st_size
        assert img["status"] == "available"
        assert [r["node"] for r in img["replicas"]] == [f"{lab.state.lab_id}-storage-1"]
        # the same bytes again: 200, unchanged, nothing re-sent
        again = client.upload_image("up-one", payload, sha256=sha)
        assert again["sha256"] == sha and again["etag"] == img["etag"]
        # other bytes for an image that holds data: 409, nothing changes
        other = payload.read_bytes()[:-1] + b"X"
        resp = _put_data(lab, "up-one", other)
        assert resp.status_code == 409, resp.text
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert client.get_image("up-one")["sha256"] == sha
    finally:
        _cleanup(client, "up-one")


def test_upload_with_wrong_checksum_is_refused_and_stores_nothing(client, lab, payload):
    client.put_image("up-bad", format="raw", min_replicas=1)
    try:
        resp = _put_data(lab, "up-bad", payload.read_bytes(), {"X-Checksum-Sha256": "0" * 64})
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert "X-Checksum-Sha256" in body["errors"]
        img = client.get_image("up-bad")
        assert img["sha256"] is None and img["replicas"] == [] and img["status"] == "pending"
        store = lab.dir / "nodes" / f"{lab.state.lab_id}-storage-1" / "images"
        assert not [p for p in store.iterdir() if p.name.startswith("up-bad.")]
    finally:
        _cleanup(client, "up-bad")


@pytest.mark.parametrize("case, expect", [
    ("content-type", 415), ("missing", 404), ("source-url", 409), ("empty", 400), ("bad-header", 422),
])
def test_upload_bad_input(client, lab, case, expect):
    name = "up-src" if case == "source-url" else "up-input"
    if case == "source-url":
        client.put_image(name, source_url="http://127.0.0.1:9/x.raw", format="raw", min_replicas=1)
    elif case != "missing":
        client.put_image(name, format="raw", min_replicas=1)
    try:
        headers = {}
        data = b"x" * 1000
        if case == "content-type":
            headers["Content-Type"] = "application/json"
        if case == "empty":
            data = b""
        if case == "bad-header":
            headers["X-Checksum-Sha256"] = "not-hex"
        resp = _put_data(lab, name if case != "missing" else "no-such-image", data, headers)
        assert resp.status_code == expect, resp.text
        assert resp.headers["Content-Type"] == "application/problem+json"
        if case == "bad-header":
            assert "X-Checksum-Sha256" in resp.json()["errors"]
    finally:
        _cleanup(client, name)


def _worker_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _peak_rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_large_upload_is_streamed_not_buffered(client, lab):
    """256 MiB through the service: no worker's peak RSS grows by more than 64 MiB."""
    d = _workdir("cowfleet-bigupload-")
    big = d / "big.raw"
    with open(big, "wb") as fh:      # sparse: cheap to make, still 256 MiB on the wire
        fh.truncate(256 << 20)
        fh.seek(100 << 20)
        fh.write(b"cowfleet")
    workers = _worker_pids(lab.state.pids["service"])
    assert len(workers) >= 4      # the contract: >= 4 gunicorn workers
    before = {p: _peak_rss_kib(p) for p in workers}
    client.put_image("up-big", format="raw", min_replicas=1)
    try:
        img = client.upload_image("up-big", big)
        assert img["size_bytes"] == 256 << 20 and img["status"] == "available"
        growth = max(_peak_rss_kib(p) - before[p] for p in workers) // 1024
        assert growth < 64, f"a worker's peak RSS grew by {growth} MiB during a 256 MiB upload"
    finally:
        _cleanup(client, "up-big")
        big.unlink()
        d.rmdir()


def test_uploaded_image_replicates_to_a_second_storage_node(client, lab, payload):
    """min_replicas 2: a second storage agent (another rack) copies the
    upload from the first, peer to peer, and the image becomes available."""
    d = _workdir("cowfleet-storage2-")
    name = f"{lab.state.lab_id}-storage-2"
    proc = c.spawn(c.python_cmd("cowfleet.agents.main", "--role", "storage", "--rack", "rack-b",
                                "--zk", lab.state.zk, "--name", name, "--state-dir", str(d / name)),
                   d / "agent.log")
    try:
        wait_until(lambda: any(n["name"] == name for n in client.nodes()), 30, "second storage agent")
        client.put_image("up-two", format="raw", min_replicas=2)
        img = client.upload_image("up-two", payload)
        assert img["status"] in ("replicating", "available")
        wait_until(lambda: client.get_image("up-two")["status"] == "available", 60, "two replicas")
        img = client.get_image("up-two")
        assert sorted(r["rack"] for r in img["replicas"]) == sorted([lab.rack, "rack-b"])
        copy = d / name / "images" / "up-two.img"
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == img["sha256"]
        assert not os.access(copy, os.W_OK) or oct(copy.stat().st_mode & 0o222) == "0o0"
    finally:
        _cleanup(client, "up-two")
        c.stop_pid(proc.pid)
        tgt.remove_node_targets(name)
        subprocess.run(["rm", "-rf", str(d)])
    with pytest.raises(ApiError):
        client.upload_image("up-two", payload, retries=0)   # deleted: 404


def test_cli_upload_list_get_delete(client, lab, payload):
    env = dict(os.environ, COWFLEET_ENDPOINT=lab.state.endpoint, COWFLEET_TOKEN=lab.state.token)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cowfleet.cli", *args], capture_output=True,
                              text=True, env=env, timeout=120)
    up = cli("image", "upload", "up-cli", str(payload), "--min-replicas", "1")
    try:
        assert up.returncode == 0, up.stderr
        assert "image up-cli: available" in up.stdout
        listed = cli("image", "list")
        assert any(line.split()[0] == "up-cli" and "available" in line for line in listed.stdout.splitlines())
        assert cli("image", "get", "up-cli").returncode == 0
        missing = cli("image", "upload", "up-cli2", "/nonexistent/file.raw")
        assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1
        assert client.get_image("up-cli2") is None            # nothing created on bad input
        gone = cli("image", "delete", "up-cli")
        assert gone.returncode == 0 and client.get_image("up-cli") is None
    finally:
        _cleanup(client, "up-cli")
