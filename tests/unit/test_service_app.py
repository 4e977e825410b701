"""The Flask service without ZooKeeper: everything that fails before reaching it.

The app points at 127.0.0.1:1 (nothing listens there); on top of that its
ZooKeeper holder is replaced by a tripwire so a request that would connect
fails at once (as a 500) and is recorded, instead of waiting for a timeout.
"""
from __future__ import annotations

import json

import pytest

from cowfleet.protocol import ProblemType as T
from cowfleet.service import create_app
from cowfleet.service.api import check_name
from cowfleet.service.paging import ListQuery, list_query
from cowfleet.service.problems import Problem

ADMIN, READER = "adm1n-t0ken", "r3ader-t0ken"
PROBLEM = "application/problem+json"
# func_only: the session lab's teardown may run after the last test here; it is not this test's time
pytestmark = pytest.mark.timeout(10, func_only=True)


class Tripwire:
    def __init__(self):
        self.calls = 0

    def get(self):
        self.calls += 1
        raise RuntimeError("unit test: the service tried to reach ZooKeeper")

    def close(self):
        pass


@pytest.fixture
def app(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# test tokens\n{ADMIN} admin\n{READER} reader\n")
    app = create_app("127.0.0.1:1", str(tokens))
    app.extensions["cowfleet.zk"] = Tripwire()
    app.extensions["cowfleet.tokens"] = app.extensions["cowfleet.tokens"][:1]   # the file only
    app.config["TESTING"] = False      # error handlers, not exceptions, like in production
    yield app
    assert app.extensions["cowfleet.zk"].calls == 0, "a request tried to reach ZooKeeper"


@pytest.fixture
def client(app):
    return app.test_client()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def problem(resp, status: int, kind: str | None = None) -> dict:
    """The problem+json answer; ``kind``: the ProblemType it must carry."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == PROBLEM
    body = json.loads(resp.get_data())
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if kind is not None:
        assert body["type"] == kind, body
    return body


VALID_IMAGE = {"source_url": "file:///var/tmp/demo.raw"}
VALID_GROUP = {"image": "demo", "flavor": "small", "size": 1}


# --- authentication / authorisation -----------------------------------------------

@pytest.mark.parametrize("method, path", [("GET", "/v1/images"), ("PUT", "/v1/images/x"),
                                          ("GET", "/v1/instance-groups/web"), ("GET", "/v1/nodes"),
                                          ("DELETE", "/v1/instance-groups/web")])
def test_missing_authorization(client, method, path):
    resp = client.open(path, method=method, json=VALID_IMAGE)
    body = problem(resp, 401, T.UNAUTHORIZED)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert 'realm="cowfleet"' in resp.headers["WWW-Authenticate"]
    assert body["title"] == "Unauthorized"


@pytest.mark.parametrize("header", ["Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer    ", ADMIN, "Token " + ADMIN])
def test_malformed_authorization(client, header):
    resp = client.get("/v1/images", headers={"Authorization": header})
    problem(resp, 401)
    assert "WWW-Authenticate" in resp.headers


@pytest.mark.parametrize("token", ["wrong", ADMIN + "x", ADMIN[:-1], ADMIN.upper()])
def test_bad_token(client, token):
    resp = client.get("/v1/images", headers=auth(token))
    problem(resp, 401, T.UNAUTHORIZED)
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_bearer_scheme_is_case_insensitive(client):
    resp = client.put("/v1/images/x", headers={"Authorization": f"bearer {ADMIN}"},
                      data="x", content_type="text/plain")
    problem(resp, 415)      # got past authentication


@pytest.mark.parametrize("method, path", [("PUT", "/v1/images/x"), ("DELETE", "/v1/images/x"),
                                          ("PUT", "/v1/instance-groups/web"),
                                          ("DELETE", "/v1/instance-groups/web"),
                                          ("POST", "/v1/images")])
def test_reader_may_not_write(client, method, path):
    resp = client.open(path, method=method, headers=auth(READER), json=VALID_GROUP)
    body = problem(resp, 403, T.FORBIDDEN)
    assert "reader" in body["detail"]


def test_reader_options_allowed(client):
    resp = client.options("/v1/images/x", headers=auth(READER))
    assert resp.status_code == 200
    assert "PUT" in resp.headers["Allow"]


def test_healthz_is_open_but_reports_zookeeper_down(client):
    body = problem(client.get("/healthz"), 503)
    assert "ZooKeeper" in body["detail"]
    # the tripwire was hit on purpose here; reset it for the fixture's check
    client.application.extensions["cowfleet.zk"].calls = 0


# --- request bodies ---------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/images/x", "/v1/instance-groups/web"])
@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_wrong_content_type(client, path, ctype):
    resp = client.put(path, headers=auth(ADMIN), data=json.dumps(VALID_GROUP), content_type=ctype)
    body = problem(resp, 415, T.UNSUPPORTED_MEDIA_TYPE)
    assert "application/json" in body["detail"]


def test_a_json_patch_body_is_415(client):
    patch = json.dumps([{"op": "replace", "path": "/size", "value": 2}])
    # a PUT is told to send JSON (a PATCH is told of the merge patch: tests/integration/test_bad_input.py;
    # this app has no ZooKeeper, and a PATCH reads the group first)
    resp = client.put("/v1/instance-groups/web", headers=auth(ADMIN), data=patch,
                      content_type="application/json-patch+json")
    body = problem(resp, 415, T.UNSUPPORTED_MEDIA_TYPE)
    assert "JSON Patch" in body["detail"] and "application/json" in body["detail"]
    assert "merge patch" not in body["detail"]


def test_missing_content_type(client):
    resp = client.put("/v1/images/x", headers=auth(ADMIN), data=b"{}")
    problem(resp, 415)


@pytest.mark.parametrize("raw", [b"{", b"{'a': 1}", b"nope", b"{\"a\": }", b"\xff\xfe{}"])
def test_invalid_json(client, raw):
    resp = client.put("/v1/images/x", headers=auth(ADMIN), data=raw, content_type="application/json")
    body = problem(resp, 400, T.MALFORMED_BODY)
    assert "JSON" in body["detail"]


@pytest.mark.parametrize("raw", [b"", b"   \n"])
def test_empty_body(client, raw):
    resp = client.put("/v1/images/x", headers=auth(ADMIN), data=raw, content_type="application/json")
    problem(resp, 400, T.MALFORMED_BODY)


@pytest.mark.parametrize("path", ["/v1/images/x", "/v1/instance-groups/web"])
@pytest.mark.parametrize("doc", [[], [VALID_GROUP], "a string", 3, None, True])
def test_json_that_is_not_an_object(client, path, doc):
    resp = client.put(path, headers=auth(ADMIN), data=json.dumps(doc), content_type="application/json")
    body = problem(resp, 422, T.INVALID)
    assert "_schema" in body["errors"]


def test_json_suffix_content_types_accepted(client):
    resp = client.put("/v1/images/x", headers=auth(ADMIN), data=b"[]",
                      content_type="application/merge-patch+json")
    problem(resp, 422)      # parsed as JSON, then rejected as not an object
    resp = client.put("/v1/images/x", headers=auth(ADMIN), data=b"[]",
                      content_type="application/json; charset=utf-8")
    problem(resp, 422)


def test_body_over_one_mib(client):
    big = json.dumps({"labels": {"k": "v" * (1 << 20)}}).encode()
    assert len(big) > 1 << 20
    resp = client.put("/v1/images/x", headers=auth(ADMIN), data=big, content_type="application/json")
    problem(resp, 413, T.BODY_TOO_LARGE)


def test_body_of_exactly_the_limit_is_read(client):
    doc = b"[" + b" " * ((1 << 20) - 2) + b"]"
    assert len(doc) == 1 << 20
    resp = client.put("/v1/images/x", headers=auth(ADMIN), data=doc, content_type="application/json")
    problem(resp, 422)


def test_image_unknown_field(client):
    resp = client.put("/v1/images/x", headers=auth(ADMIN),
                      json={"source_url": "file:///a", "unknown-field": 1})
    body = problem(resp, 422, T.INVALID)
    assert "unknown-field" in body["errors"]
    assert list(body["errors"]) == ["unknown-field"]


def test_image_invalid_fields_all_named(client):
    resp = client.put("/v1/images/x", headers=auth(ADMIN),
                      json={"source_url": "ftp://h/x", "format": "vmdk", "min_replicas": "2"})
    body = problem(resp, 422)
    assert set(body["errors"]) == {"source_url", "format", "min_replicas"}


def test_group_invalid_spec(client):
    resp = client.put("/v1/instance-groups/web", headers=auth(ADMIN),
                      json={"image": "Demo", "flavor": "small", "size": True,
                            "placement": {"strategy": "random", "zone": 1}})
    body = problem(resp, 422)
    assert set(body["errors"]) == {"image", "size", "placement"}
    assert set(body["errors"]["placement"]) == {"strategy", "zone"}


# --- routing ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/v1", "/v2/images", "/v1/images/x/y", "/v1/volumes"])
def test_unknown_route(client, path):
    body = problem(client.get(path, headers=auth(ADMIN)), 404, T.BLANK)    # no more than its status
    assert body["title"] == "Not Found"


def test_unknown_route_still_needs_a_token(client):
    problem(client.get("/nope"), 401)


def test_method_not_allowed(client):
    resp = client.patch("/v1/images/x", headers=auth(ADMIN), json={})
    problem(resp, 405, T.BLANK)
    assert set(resp.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "PUT", "DELETE"}


# --- validation that should happen before ZooKeeper is touched (findings) ---------

def test_image_bad_name_rejected_before_zookeeper(app, client):
    resp = client.put("/v1/images/Bad_Name", headers=auth(ADMIN), json=VALID_IMAGE)
    tripped = app.extensions["cowfleet.zk"].calls
    app.extensions["cowfleet.zk"].calls = 0
    assert tripped == 0, "ZooKeeper was reached before the name was checked"
    body = problem(resp, 422)
    assert "name" in body["errors"]


def test_group_bad_name_rejected_before_zookeeper(app, client):
    resp = client.put("/v1/instance-groups/Bad_Name", headers=auth(ADMIN), json=VALID_GROUP)
    tripped = app.extensions["cowfleet.zk"].calls
    app.extensions["cowfleet.zk"].calls = 0
    assert tripped == 0, "ZooKeeper was reached before the name was checked"
    problem(resp, 422)


@pytest.mark.parametrize("path", ["/v1/images?limit=0", "/v1/instance-groups?limit=abc"])
def test_bad_limit_rejected_before_zookeeper(app, client, path):
    resp = client.get(path, headers=auth(READER))
    tripped = app.extensions["cowfleet.zk"].calls
    app.extensions["cowfleet.zk"].calls = 0
    assert tripped == 0, "ZooKeeper was reached before ?limit= was checked"
    body = problem(resp, 422)
    assert "limit" in body["errors"]


# --- list_args (pure) -------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [({}, (100, None)), ({"limit": "1"}, (1, None)),
                                            ({"limit": "1000", "after": "web"}, (1000, "web")),
                                            ({"after": ""}, (100, None))])
def test_list_args_valid(args, expected):
    assert list_query(args) == ListQuery(*expected)


def test_list_label_selectors():
    from werkzeug.datastructures import MultiDict
    q = list_query(MultiDict([("label", "team=a"), ("label", "env=prod")]))
    assert q.labels == {"team": "a", "env": "prod"}
    assert q.matches({"team": "a", "env": "prod", "x": "y"}) and not q.matches({"team": "a"})
    with pytest.raises(Problem) as exc:
        list_query(MultiDict([("label", "novalue")]))
    assert "label" in exc.value.errors


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "", " 5", "1e2", "2.0"])
def test_list_args_invalid(limit):
    with pytest.raises(Problem) as exc:
        list_query({"limit": limit})
    assert exc.value.status == 422
    assert "limit" in exc.value.errors


def test_list_args_superscript_digit():
    with pytest.raises(Problem) as exc:
        list_query({"limit": "²"})
    assert exc.value.status == 422


# --- check_name (pure) ------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "web-01", "x" * 63])
def test_check_name_valid(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "Web", "-a", "a-", "a_b", "x" * 64, None])
def test_check_name_invalid(name):
    with pytest.raises(Problem) as exc:
        check_name(name, "group")
    assert exc.value.status == 422
    assert "group" in exc.value.errors


def test_check_name_trailing_newline():
    with pytest.raises(Problem):
        check_name("web\n")


def test_the_list_mirror_only_reads():
    from cowfleet.service.mirror import MirrorReader

    class ZK:                                   # what it would forward to
        def exists(self, path):
            return path == "/cowfleet/groups/a"

        def create(self, path, value=b""):
            raise AssertionError("a write reached ZooKeeper through the mirror")
        set = delete = transaction = ensure_path = create

    reader = MirrorReader(ZK(), None, ())
    assert reader.exists("/cowfleet/groups/a") and not reader.exists("/cowfleet/groups/b")
    for write in ("create", "set", "delete", "transaction", "ensure_path"):
        with pytest.raises(AttributeError):
            getattr(reader, write)


class _Session:
    """The two things a RecordCache asks of a KazooClient beyond its reads."""

    def __init__(self):
        self.listeners, self.reads = [], []

    def add_listener(self, fn):
        self.listeners.append(fn)

    def get(self, path, watch=None):
        self.reads.append((path, watch))
        return b"x", object()


def test_the_mirror_keeps_a_read_until_its_watch_fires():
    from types import SimpleNamespace

    from cowfleet.service.mirror import RecordCache

    zk = _Session()
    cache = RecordCache(zk)
    key = ("data", "/g/a")
    # a watch firing between the reply and keep(): the answer is not kept
    token = cache.reading(key)
    cache.data_changed(SimpleNamespace(path="/g/a"))
    cache.keep(key, token, "old")
    assert cache.held(key) is None
    # kept, then dropped by its watch
    token = cache.reading(key)
    cache.keep(key, token, "new")
    assert cache.held(key) == "new"
    cache.children_changed(SimpleNamespace(path="/g/a"))      # another kind of watch: kept
    assert cache.held(key) == "new"
    cache.data_changed(SimpleNamespace(path="/g/a"))
    assert cache.held(key) is None
    # a connection state change drops everything held and every read in flight
    cache.keep(key, cache.reading(key), "again")
    token = cache.reading(("data", "/g/b"))
    [listener] = zk.listeners
    listener("SUSPENDED")
    cache.keep(("data", "/g/b"), token, "b")
    assert cache.held(key) is None and cache.held(("data", "/g/b")) is None


def test_the_mirror_reads_a_miss_once_with_its_watch():
    from cowfleet.service.mirror import MirrorReader, RecordCache

    zk = _Session()
    cache = RecordCache(zk)
    reader = MirrorReader(zk, cache, ("/g",))
    assert reader.get("/g/a") == reader.get("/g/a")
    assert zk.reads == [("/g/a", cache.data_changed)]        # the second from the mirror
    reader.get("/g")                                         # a collection itself: always read
    reader.get("/g/a", watch=print)                          # a caller's own watch: read
    assert zk.reads[1:] == [("/g", None), ("/g/a", print)]
