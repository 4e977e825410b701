"""The command line end to end: every command and output format, run as a
user runs it (a subprocess) against the session's lab. JSON and YAML are
parsed and compared with the API's objects; errors are one line on stderr
with a non-zero exit; progress never reaches stdout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
import yaml

from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def run(*args, endpoint=None, token=None, env_extra=None, stdin=None, timeout=300):
    env = dict(os.environ)
    env.pop("COWFLEET_DEBUG", None)
    for key, value in (("COWFLEET_ENDPOINT", endpoint), ("COWFLEET_TOKEN", token)):
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "cowfleet.cli", *args], capture_output=True, text=True,
                          env=env, input=stdin, timeout=timeout)


@pytest.fixture(scope="module")
def cli(lab):
    def call(*args, token=None, **kw):
        return run(*args, endpoint=lab.state.endpoint, token=token or lab.state.token, **kw)
    return call


def ok(proc) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


def one_line_error(proc, code: int | None = None, *words: str) -> str:
    """A failed command: non-zero exit, nothing on stdout, one line on stderr
    (``cowfleet: ...``) holding ``words``, no traceback."""
    assert proc.returncode != 0 and (code is None or proc.returncode == code), (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cowfleet: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def formats(cli, *args, expect, volatile=()):
    """The command in every output format: json and yaml are exactly ``expect``
    (the API's objects) but for ``volatile`` fields, which move between two
    reads (a node's last_seen); table and wide are tables holding the names."""
    def steady(obj):
        if isinstance(obj, list):
            return [steady(o) for o in obj]
        return {k: v for k, v in obj.items() if k not in volatile} if isinstance(obj, dict) else obj
    as_json = json.loads(ok(cli(*args, "-o", "json")).stdout)
    assert steady(as_json) == steady(expect)
    assert steady(yaml.safe_load(ok(cli(*args, "-o", "yaml")).stdout)) == steady(expect)
    table, wide = ok(cli(*args)).stdout, ok(cli(*args, "-o", "wide")).stdout
    names = [o["name"] for o in (expect if isinstance(expect, list) else [expect]) if "name" in o]
    for name in names:
        assert name in table and name in wide
    return table, wide


# -- no service needed ------------------------------------------------------------------

def test_version_help_and_completion():
    import cowfleet
    assert ok(run("--version")).stdout.strip() == f"cowfleet {cowfleet.__version__}"
    assert "group" in ok(run("--help")).stdout
    for shell in ("bash", "zsh"):
        script = ok(run("completion", shell)).stdout
        assert "_COWFLEET_COMPLETE" in script
    # what the bash script asks: the commands that start with "gr"
    got = run("gr", env_extra={"_COWFLEET_COMPLETE": "bash_complete", "COMP_WORDS": "cowfleet gr",
                               "COMP_CWORD": "1"})
    assert "group" in got.stdout


def test_bad_command_lines_are_one_line(tmp_path):
    endpoint = "http://127.0.0.1:9"
    one_line_error(run("grup", endpoint=endpoint, token="x"), 2, "No such command 'grup'")
    one_line_error(run("group", "create", "web", endpoint=endpoint, token="x"), 2, "group create", "--image")
    one_line_error(run("group", "list", "-o", "xml", endpoint=endpoint, token="x"), 2, "xml")
    one_line_error(run("group", "scale", "web", "-1", endpoint=endpoint, token="x"), 2)
    one_line_error(run("group", "create", "web", "--image", "i", "--label", "nokey",
                       endpoint=endpoint, token="x"), 2, "--label", "key=value")
    one_line_error(run("group", "create", "web", "--image", "i", "--user-data", "@/nonexistent/ud",
                       endpoint=endpoint, token="x"), 2, "cannot read /nonexistent/ud")
    one_line_error(run("token", "create", "ci", "--ttl", "soon", endpoint=endpoint, token="x"), 2, "--ttl")
    # an endpoint without http:// is said so, not a traceback
    one_line_error(run("group", "list", endpoint="127.0.0.1:8080", token="x"), 1, "127.0.0.1:8080",
                   "http://")
    one_line_error(run("group", "list", endpoint=endpoint, token="x"), 1, "cannot reach the service")
    # nothing configured (no lab's env file either)
    none = {"COWFLEET_LAB_DIR": str(tmp_path / "none")}
    one_line_error(run("image", "list", env_extra=none), 1, "no endpoint")


# -- against the lab ----------------------------------------------------------------------

def test_api_errors_print_the_detail_and_the_fields(cli, lab):
    line = one_line_error(cli("flavor", "create", "cli-huge", "--vcpus", "999", "--memory-mib", "128"), 1)
    assert "422" in line and "vcpus" in line
    one_line_error(cli("image", "get", "nope-nope"), 1, "image 'nope-nope' does not exist")
    one_line_error(cli("group", "get", "nope-nope"), 1, "instance group 'nope-nope' does not exist")
    one_line_error(cli("group", "wait", "nope-nope"), 1, "instance group 'nope-nope' does not exist")
    one_line_error(cli("group", "scale", "nope-nope", "2"), 1, "404")
    one_line_error(cli("group", "update", "nope-nope"), 2, "nothing to change")
    one_line_error(cli("node", "get", "nope-nope"), 1, "node 'nope-nope' does not exist")
    one_line_error(cli("instance", "get", "nope-0a1b2c"), 1, "does not exist")
    one_line_error(cli("instance", "get", "nohex"), 2, "--group")
    one_line_error(cli("flavor", "delete", "small"), 1, "409", "built in")
    one_line_error(cli("flavor", "list", token="not-a-token"), 1, "401")
    one_line_error(cli("flavor", "create", "cli-r", "--vcpus", "1", "--memory-mib", "64",
                       token=lab.state.reader_token), 1, "403")


def test_flavors(cli, client):
    try:
        created = ok(cli("flavor", "create", "cli-f", "--vcpus", "2", "--memory-mib", "256", "-o", "json"))
        assert json.loads(created.stdout) == client.get_flavor("cli-f")
        one_line_error(cli("flavor", "create", "cli-f", "--vcpus", "2", "--memory-mib", "256"), 1, "exists")
        formats(cli, "flavor", "get", "cli-f", expect=client.get_flavor("cli-f"))
        table, _ = formats(cli, "flavor", "list", expect=client.list_flavors())
        header = table.splitlines()[0]
        assert header.split() == ["NAME", "VCPUS", "MEMORY_MIB", "DISK_GIB"]
        ok(cli("flavor", "delete", "cli-f", "--wait"))
        assert client.get_flavor("cli-f") is None
        one_line_error(cli("flavor", "delete", "cli-f"), 1, "does not exist")
    finally:
        client.delete_flavor("cli-f")


def test_tables_are_sized_to_their_data(cli, client):
    long = "cli-" + "x" * 50
    try:
        ok(cli("flavor", "create", long, "--vcpus", "1", "--memory-mib", "64"))
        lines = ok(cli("flavor", "list")).stdout.splitlines()
        # VCPUS (right-aligned) ends at the same place on every line, two spaces after the longest name
        ends = {line.index(line.split()[1], len(line.split()[0])) + len(line.split()[1]) for line in lines}
        assert ends == {len(long) + 2 + len("VCPUS")}, lines
    finally:
        client.delete_flavor(long)


def test_completion_offers_existing_names(cli):
    def complete(*words):
        line = ["cowfleet", *words]
        return cli(*words, env_extra={"_COWFLEET_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(line),
                                      "COMP_CWORD": str(len(line) - 1)}).stdout
    assert "small" in complete("flavor", "get", "sm") and "medium" not in complete("flavor", "get", "sm")
    assert "delete" in complete("flavor", "de")


def test_nodes_network_and_instances(cli, client):
    nodes = client.nodes()
    formats(cli, "node", "list", expect=nodes, volatile=("last_seen",))
    formats(cli, "node", "get", nodes[0]["name"], expect=nodes[0], volatile=("last_seen",))
    net = client.network()
    assert json.loads(ok(cli("network", "get", "-o", "json")).stdout) == net
    assert "instance network" in ok(cli("network", "get")).stdout


@pytest.fixture
def blob():
    d = Path(tempfile.mkdtemp(prefix="cowfleet-cli-", dir="/var/tmp"))
    path = d / "blob.raw"
    path.write_bytes(os.urandom(2 << 20))
    yield path
    path.unlink(missing_ok=True)
    d.rmdir()


def _drop_image(client, name):
    try:
        client.delete_image(name)
    except Exception:
        pass
    wait_until(lambda: client.get_image(name) is None, 60, f"image {name} gone")


def test_image_upload_min_replicas_and_no_orphan(cli, client, blob):
    try:
        up = ok(cli("image", "upload", "cli-img", str(blob), "-o", "json", "--wait"))
        img = json.loads(up.stdout)                       # stdout: the object alone
        assert img["name"] == "cli-img" and img["status"] == "available"
        storage = sum(1 for n in client.nodes() if n["role"] == "storage" and n["healthy"])
        if storage < 2:                                   # what the cluster can hold, said on stderr
            assert img["min_replicas"] == storage and "warning" in up.stderr
        assert "checksumming" in up.stderr
        formats(cli, "image", "get", "cli-img", expect=client.get_image("cli-img"))
        formats(cli, "image", "list", expect=client.list_images())
        # a re-upload honours --min-replicas; a different --format is refused, clearly
        again = ok(cli("image", "upload", "cli-img", str(blob), "--min-replicas", "3"))
        assert "min_replicas" in again.stderr and client.get_image("cli-img")["min_replicas"] == 3
        one_line_error(cli("image", "upload", "cli-img", str(blob), "--format", "qcow2"), 1,
                       "format", "cannot change")
        # a failed upload leaves no orphan: the image made for it goes again
        bad = cli("image", "upload", "cli-bad", str(blob), "--format", "qcow2", "--min-replicas", "1")
        assert bad.returncode == 1 and "422" in bad.stderr and "Traceback" not in bad.stderr
        error = [line for line in bad.stderr.splitlines() if line.startswith("cowfleet: ")]
        assert len(error) == 1 and error[0].count("qcow2") <= 2     # said once, not repeated
        assert client.get_image("cli-bad") is None
        ok(cli("image", "delete", "cli-img", "--wait"))
        assert client.get_image("cli-img") is None
    finally:
        _drop_image(client, "cli-img")
        _drop_image(client, "cli-bad")


def test_image_create_from_a_url(cli, client, demo_image):
    try:
        made = ok(cli("image", "create", "cli-url", "--source-url", f"file://{demo_image}", "--min-replicas", "1",
                      "--label", "purpose=cli", "--wait", "-o", "yaml"))
        img = yaml.safe_load(made.stdout)
        assert img["status"] == "available" and img["labels"] == {"purpose": "cli"}
        assert "unchanged" in ok(cli("image", "create", "cli-url", "--source-url", f"file://{demo_image}",
                                     "--min-replicas", "1", "--label", "purpose=cli")).stdout
    finally:
        _drop_image(client, "cli-url")


def test_group_lifecycle(cli, client, image_demo, own_groups, tmp_path):
    own_groups.append("cli-web")
    created = cli("group", "create", "cli-web", "--image", "demo", "--flavor", "small", "--size", "1",
                  "--label", "tier=web", "--strategy", "pack", "--max-surge", "2", "--wait", "-o", "json")
    ok(created)
    g = json.loads(created.stdout)                         # stdout: the group alone, progress on stderr
    assert g["status"]["phase"] == "ready" and g["status"]["ready"] == 1
    assert g["labels"] == {"tier": "web"} and g["placement"]["strategy"] == "pack"
    assert g["update_policy"]["max_surge"] == 2
    assert "ready" in created.stderr
    one_line_error(cli("group", "create", "cli-web", "--image", "demo"), 1, "exists")
    # every format of get and list is the API's object
    current = client.get_group("cli-web")
    table, wide = formats(cli, "group", "get", "cli-web", expect=current)
    assert "INSTANCE" in table and current["instances"][0]["id"] in table and "MAC" in wide
    formats(cli, "group", "list", expect=client.list_groups())
    # scale through a merge patch, waiting
    scaled = ok(cli("group", "scale", "cli-web", "2", "--wait"))
    assert "2/2 ready" in scaled.stdout and client.get_group("cli-web")["status"]["ready"] == 2
    # update: a merge patch of what is given (k- removes a label)
    ok(cli("group", "update", "cli-web", "--label", "tier-", "--label", "team=a"))
    assert client.get_group("cli-web")["labels"] == {"team": "a"}
    # apply: a file saved from get applies as it is (unchanged), an edit is configured
    saved = tmp_path / "web.yaml"
    saved.write_text(ok(cli("group", "get", "cli-web", "-o", "yaml")).stdout)
    assert "unchanged" in ok(cli("group", "apply", "-f", str(saved))).stdout
    doc = yaml.safe_load(saved.read_text())
    doc["size"] = 1
    saved.write_text(yaml.safe_dump(doc))
    applied = ok(cli("group", "apply", "-f", str(saved), "--wait"))
    assert "configured" in applied.stdout and client.get_group("cli-web")["size"] == 1
    one_line_error(cli("group", "apply", "-f", "-", stdin="size: [\n"), 2, "not valid YAML or JSON")
    one_line_error(cli("group", "apply", "-f", "-", stdin='{"size": 1}'), 2, "no 'name'")
    line = one_line_error(cli("group", "apply", "-f", "-", stdin='{"name": "cli-web", "image": "demo", '
                                                                   '"flavor": "small", "size": 1, "colour": "red"}'), 1)
    assert "422" in line and "colour" in line
    waited = ok(cli("group", "wait", "cli-web", "-o", "json"))
    assert json.loads(waited.stdout)["status"]["phase"] == "ready"
    gone = ok(cli("group", "delete", "cli-web", "--wait"))
    assert "deleted" in gone.stdout and client.get_group("cli-web") is None


# -- tokens through the API --------------------------------------------------------------------

def _status(lab, method, path, token, headers_extra=None, **kw):
    with requests.Session() as s:
        return s.request(method, f"{lab.state.endpoint}{path}", timeout=10,
                         headers={"Authorization": f"Bearer {token}", "Connection": "close", **(headers_extra or {})},
                         **kw)


def test_tokens_through_the_cli(cli, lab):
    try:
        made = ok(cli("token", "create", "cli-ci", "--role", "reader"))
        secret = made.stdout.strip()
        assert len(secret) >= 40 and "shown once" in made.stderr
        assert _status(lab, "GET", "/v1/flavors", secret).status_code == 200
        listed = json.loads(ok(cli("token", "list", "-o", "json")).stdout)
        mine = next(t for t in listed if t["name"] == "cli-ci")
        assert mine["role"] == "reader" and "token" not in mine and secret not in json.dumps(listed)
        wait_until(lambda: json.loads(ok(cli("token", "get", "cli-ci", "-o", "json")).stdout)["last_used"], 30,
                   "last_used set after the token was used")
        assert "cli-ci" in ok(cli("token", "list")).stdout
        assert yaml.safe_load(ok(cli("token", "get", "cli-ci", "-o", "yaml")).stdout)["name"] == "cli-ci"
        one_line_error(cli("token", "create", "cli-ci"), 1, "409", "exists")
        one_line_error(cli("token", "create", "UX bad"), 1, "422", "name")
        one_line_error(cli("token", "list", token=secret), 1, "403")          # a reader may not see tokens
        one_line_error(cli("token", "create", "cli-x", token=secret), 1, "403")
        expiring = json.loads(ok(cli("token", "create", "cli-ttl", "--ttl", "3s", "-o", "json")).stdout)
        assert expiring["expires_at"] and expiring["token"]
        assert _status(lab, "GET", "/v1/flavors", expiring["token"]).status_code == 200
        wait_until(lambda: _status(lab, "GET", "/v1/flavors", expiring["token"]).status_code == 401, 30,
                   "the token refused once expired")
        ok(cli("token", "delete", "cli-ci"))
        wait_until(lambda: {_status(lab, "GET", "/v1/flavors", secret).status_code for _ in range(6)} == {401},
                   10, "the deleted token refused by every worker")
        one_line_error(cli("token", "delete", "cli-ci"), 1, "does not exist")
    finally:
        for name in ("cli-ci", "cli-ttl", "cli-x"):
            cli("token", "delete", name)


def test_bootstrap_token_through_zookeeper(lab):
    """The first admin token of a cluster: `--zk`, explicitly (no API needed)."""
    none = {"COWFLEET_LAB_DIR": "/nonexistent"}
    made = run("token", "create", "cli-boot", "--role", "admin", "--zk", lab.state.zk, env_extra=none)
    try:
        ok(made)
        secret = made.stdout.strip()
        wait_until(lambda: _status(lab, "GET", "/v1/tokens", secret).status_code == 200, 10,
                   "the bootstrapped admin token accepted")
        one_line_error(run("token", "create", "UX bad", "--zk", lab.state.zk, env_extra=none), 2, "DNS label")
        assert "cli-boot" in ok(run("token", "list", "--zk", lab.state.zk, env_extra=none)).stdout
        # without --zk, the API: no endpoint here, so it says so (never ZooKeeper behind one's back)
        one_line_error(run("token", "list", env_extra=dict(none, COWFLEET_ZK=lab.state.zk)), 1, "no endpoint")
        ok(run("token", "delete", "cli-boot", "--zk", lab.state.zk, env_extra=none))
    finally:
        run("token", "delete", "cli-boot", "--zk", lab.state.zk, env_extra=none)


def test_tokens_api(lab):
    admin, reader = lab.state.token, lab.state.reader_token
    try:
        # the reader role may not read or write tokens
        assert _status(lab, "GET", "/v1/tokens", reader).status_code == 403
        assert _status(lab, "POST", "/v1/tokens", reader, json={"name": "api-r"}).status_code == 403
        assert _status(lab, "GET", "/v1/tokens", "nope").status_code == 401
        # names are DNS labels: 422 naming name
        for bad in ("", "../x", "UX bad", "a" * 64, "-a"):
            resp = _status(lab, "POST", "/v1/tokens", admin, json={"name": bad})
            assert resp.status_code == 422 and "name" in resp.json()["errors"], (bad, resp.text)
        resp = _status(lab, "PUT", "/v1/tokens/UPPER", admin, json={})
        assert resp.status_code == 422 and "name" in resp.json()["errors"]
        # expiry: a time in the past, both forms, a bad ttl
        resp = _status(lab, "PUT", "/v1/tokens/api-e", admin, json={"expires_at": "2001-01-01T00:00:00Z"})
        assert resp.status_code == 422 and "expires_at" in resp.json()["errors"]
        resp = _status(lab, "PUT", "/v1/tokens/api-e", admin,
                       json={"expires_at": "2099-01-01T00:00:00Z", "ttl": 60})
        assert resp.status_code == 422 and "ttl" in resp.json()["errors"]
        resp = _status(lab, "PUT", "/v1/tokens/api-e", admin, json={"ttl": 0})
        assert resp.status_code == 422 and "ttl" in resp.json()["errors"]
        resp = _status(lab, "PUT", "/v1/tokens/api-e", admin, json={"role": "god"})
        assert resp.status_code == 422 and "role" in resp.json()["errors"]
        # create (POST and PUT): the secret once; lists and gets never show it
        made = _status(lab, "POST", "/v1/tokens", admin, json={"name": "api-a", "role": "admin",
                                                                "expires_at": "2099-01-01T00:00:00Z"})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["name"] == "api-a" and body["expires_at"].startswith("2099-01-01") and body["token"]
        assert body["last_used"] is None and body["expired"] is False
        assert _status(lab, "POST", "/v1/tokens", admin, json={"name": "api-a"}).status_code == 409
        # preconditions as on every PUT: create-only is 412 when it exists, If-Match on a create 412
        assert _status(lab, "PUT", "/v1/tokens/api-a", admin, json={},
                       headers_extra={"If-None-Match": "*"}).status_code == 412
        assert _status(lab, "PUT", "/v1/tokens/api-c", admin, json={},
                       headers_extra={"If-Match": '"0"'}).status_code == 412
        assert _status(lab, "DELETE", "/v1/tokens/api-a", admin, headers_extra={"If-Match": '"99"'}).status_code == 412
        put = _status(lab, "PUT", "/v1/tokens/api-b", admin, json={})
        assert put.status_code == 201 and put.json()["role"] == "reader"
        listed = _status(lab, "GET", "/v1/tokens?limit=1", admin)
        assert listed.status_code == 200 and len(listed.json()) == 1 and 'rel="next"' in listed.headers["Link"]
        everything = _status(lab, "GET", "/v1/tokens", admin).json()
        assert {"api-a", "api-b"} <= {t["name"] for t in everything}
        assert all("token" not in t for t in everything)
        assert body["token"] not in json.dumps(everything)
        # the new admin token works, and last_used follows
        assert _status(lab, "GET", "/v1/tokens/api-b", body["token"]).status_code == 200
        wait_until(lambda: _status(lab, "GET", "/v1/tokens/api-a", admin).json()["last_used"], 10,
                   "last_used set")
        assert _status(lab, "DELETE", "/v1/tokens/api-a", admin).status_code == 204
        assert _status(lab, "DELETE", "/v1/tokens/api-a", admin).status_code == 404
        assert _status(lab, "GET", "/v1/tokens/api-a", admin).status_code == 404
    finally:
        for name in ("api-a", "api-b", "api-c", "api-e", "api-r"):
            _status(lab, "DELETE", f"/v1/tokens/{name}", admin)


def test_openapi_is_public_with_summaries_and_tags(lab):
    resp = requests.get(f"{lab.state.endpoint}/v1/openapi.json", timeout=10)      # no token
    assert resp.status_code == 200
    doc = resp.json()
    assert "/v1/tokens" in doc["paths"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary") and op.get("tags"), (path, method)
