"""Tokens kept in ZooKeeper, written directly (`cowfleet token add/list/revoke
--zk`: the bootstrap path; the API's /v1/tokens is tested in test_cli.py),
honoured by every gunicorn worker; only their digests are stored."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from cowfleet.zk import layout
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def _cli(lab, *args):
    return subprocess.run([sys.executable, "-m", "cowfleet.cli", "token", *args, "--zk", lab.state.zk],
                          capture_output=True, text=True, env=dict(os.environ), timeout=60)


def _status(lab, method, token, path="/v1/flavors/tok-test", **kw):
    # a fresh connection each time, so requests spread over the workers
    with requests.Session() as s:
        return s.request(method, f"{lab.state.endpoint}{path}",
                         headers={"Authorization": f"Bearer {token}", "Connection": "close"},
                         timeout=10, **kw).status_code


def test_zookeeper_tokens_roles_and_revocation(lab, zk):
    add = _cli(lab, "add", "ci-reader", "--role", "reader")
    assert add.returncode == 0, add.stderr
    reader = add.stdout.strip()
    add = _cli(lab, "add", "ci-admin", "--role", "admin")
    assert add.returncode == 0, add.stderr
    admin = add.stdout.strip()
    try:
        assert len(reader) >= 40 and reader != admin
        # ZooKeeper holds digests, never the tokens
        for child in zk.get_children(layout.TOKENS):
            data, _ = zk.get(layout.token(child))
            assert reader not in child + data.decode() and admin not in child + data.decode()
        listed = _cli(lab, "list")
        assert "ci-reader" in listed.stdout and "reader" in listed.stdout and reader not in listed.stdout
        # every worker knows them at once (a lookup before its cache loads reads ZooKeeper)
        assert {_status(lab, "GET", reader, "/v1/flavors") for _ in range(12)} == {200}
        assert _status(lab, "PUT", reader, json={"vcpus": 1, "memory_mib": 64, "disk_gib": 1}) == 403
        assert _status(lab, "PUT", admin, json={"vcpus": 1, "memory_mib": 64, "disk_gib": 1}) in (200, 201)
        assert _status(lab, "DELETE", admin) == 204
        assert _cli(lab, "add", "ci-reader").returncode == 1          # names are unique
        revoke = _cli(lab, "revoke", "ci-reader")
        assert revoke.returncode == 0, revoke.stderr
        wait_until(lambda: {_status(lab, "GET", reader, "/v1/flavors") for _ in range(8)} == {401}, 10,
                   "the revoked token refused by every worker")
        assert _status(lab, "GET", admin, "/v1/flavors") == 200
        missing = _cli(lab, "revoke", "ci-reader")
        assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    finally:
        _cli(lab, "revoke", "ci-reader")
        _cli(lab, "revoke", "ci-admin")
