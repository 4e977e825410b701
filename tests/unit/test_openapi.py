"""The OpenAPI document says what the service really accepts: built from
create_app() without ZooKeeper, its bits checked against the code they
describe (api.NAME_RE, api.if_match, the merge patch, list parameters)."""
from __future__ import annotations

import json
import re

import pytest
from marshmallow import ValidationError

from cowfleet.models import NodeInfo
from cowfleet.service import create_app, openapi
from cowfleet.service.api import NAME_RE, if_match
from cowfleet.specs import GroupSpecSchema
from cowfleet.service.groups.service import merge_patch
from cowfleet.service.nodes import service as nodes
from cowfleet.service.paging import list_query
from cowfleet.service.problems import Problem
from cowfleet.zk import layout
from tests.unit.fake_zk import FakeZK

pytestmark = pytest.mark.timeout(10, func_only=True)


@pytest.fixture(scope="module")
def app():
    return create_app("127.0.0.1:1", "/dev/null")


@pytest.fixture(scope="module")
def doc(app):
    return openapi.build(app)


def ecma_match(pattern: str, value: str) -> bool:
    """How a JSON Schema validator applies ``pattern`` (a search, ECMA-262
    syntax: Python's for these patterns, except that ECMA's ``$`` does not
    match before a trailing newline: Python's ``\\Z``)."""
    if pattern.endswith("$"):
        pattern = pattern[:-1] + r"\Z"
    return re.search(pattern, value) is not None


def operations(doc):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield path, method, op


NAMES = ["a", "web-1", "0", "a" * 63, "", "a" * 64, "-a", "a-", "A", "a_b", "a.b", "a\n", "é"]


def test_every_name_parameter_documents_the_dns_label_rule(doc):
    seen = 0
    for path, method, op in operations(doc):
        for p in op.get("parameters", []):
            if p["in"] == "path" and p["name"] == "name":
                seen += 1
                schema = p["schema"]
                assert schema["maxLength"] == 63, (path, method)
                for name in NAMES:
                    documented = ecma_match(schema["pattern"], name) and len(name) <= schema["maxLength"]
                    assert documented == bool(NAME_RE.match(name)), (path, method, name)
    assert seen >= 8


def test_no_python_only_regex_syntax_in_the_document(doc):
    patterns = re.findall(r'"pattern": "((?:[^"\\]|\\.)*)"', json.dumps(doc))
    assert patterns
    for pattern in patterns:
        assert "\\Z" not in json.loads(f'"{pattern}"'), pattern


IF_MATCH_VALUES = ['"7"', "7", 'W/"7"', "*", "W/7", '"x"', "", "7a", '"-1"', "\u00b2", "W/", '""']


@pytest.mark.parametrize("value", IF_MATCH_VALUES)
def test_if_match_pattern_matches_what_the_service_accepts(app, doc, value):
    # every conditional write (image bytes are not: they are immutable once stored)
    writes = [op for path, method, op in operations(doc) if method in ("put", "patch", "delete")
              and any(p["in"] == "path" for p in op.get("parameters", [])) and not path.endswith("/data")]
    headers = [p for op in writes for p in op["parameters"] if p["name"] == "If-Match"]
    assert len(headers) == len(writes) >= 7
    with app.test_request_context(headers={"If-Match": value}):
        try:
            if_match()
            accepted = True
        except Problem as exc:
            assert exc.status == 412
            accepted = False
    for h in headers:
        assert ecma_match(h["schema"]["pattern"], value) == accepted, value


def _resolve(doc, schema):
    if "$ref" in schema:
        return doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def test_patch_body_is_a_partial_nullable_merge_patch(doc):
    body = doc["paths"]["/v1/instance-groups/{name}"]["patch"]["requestBody"]["content"]
    schema = _resolve(doc, body["application/merge-patch+json"]["schema"])
    whole = doc["components"]["schemas"]["GroupSpec"]
    assert set(schema["properties"]) == set(whole["properties"])
    assert schema.get("additionalProperties") is False

    def check(s):
        s = _resolve(doc, s)
        assert "required" not in s and "default" not in s
        for prop in s.get("properties", {}).values():
            assert prop.get("nullable") is True
            check(prop)
        if isinstance(s.get("additionalProperties"), dict):
            assert s["additionalProperties"].get("nullable") is True
    check(schema)
    # PUT still takes the whole spec
    put = doc["paths"]["/v1/instance-groups/{name}"]["put"]["requestBody"]["content"]
    assert set(_resolve(doc, put["application/json"]["schema"])["required"]) == {"image", "flavor", "size"}


@pytest.mark.parametrize("patch", [{"size": 3}, {"labels": {"a": None, "b": "2"}}, {"user_data": None},
                                   {"placement": {"max_per_node": None}}, {"update_policy": None}])
def test_documented_patches_are_accepted(patch):
    current = GroupSpecSchema().load({"image": "demo", "flavor": "small", "size": 1, "labels": {"a": "1"},
                                      "user_data": "x"})
    GroupSpecSchema().load(merge_patch(current, patch))


def test_removing_a_required_field_is_still_invalid():
    current = GroupSpecSchema().load({"image": "demo", "flavor": "small", "size": 1})
    with pytest.raises(ValidationError):
        GroupSpecSchema().load(merge_patch(current, {"image": None}))


def test_every_list_documents_the_list_parameters(doc):
    def returns_array(op):
        content = op["responses"]["200"].get("content", {})
        return content.get("application/json", {}).get("schema", {}).get("type") == "array"
    lists = {path: op for path, method, op in operations(doc) if method == "get" and returns_array(op)}
    events = "/v1/instance-groups/{name}/events"
    assert set(lists) == {"/v1/images", "/v1/flavors", "/v1/instance-groups", "/v1/nodes", "/v1/tokens", events}
    for path, op in lists.items():
        # a group's events page by a cursor of their own (no label filter)
        want = {"name", "limit", "after"} if path == events else {"limit", "after", "label"}
        assert {p["name"] for p in op["parameters"]} == want, path
    # what the events endpoint refuses with 422 is outside what it documents
    params = {p["name"]: p["schema"] for p in lists[events]["parameters"]}
    assert params["limit"]["maximum"] == 200 and params["limit"]["minimum"] == 1
    assert params["after"]["pattern"] == "^[0-9]{1,10}$"


# --- /v1/nodes honours what it documents -------------------------------------------

def fake_nodes() -> FakeZK:
    nodes_ = {
        "c1": NodeInfo(name="c1", role="compute", rack="r1"),
        "c2": NodeInfo(name="c2", role="compute", rack="r2"),
        "s1": NodeInfo(name="s1", role="storage", rack="r1"),
        "s2": NodeInfo(name="s2", role="storage", rack="r2"),
    }
    zk = FakeZK({layout.node(n): info.to_bytes() for n, info in nodes_.items()})
    zk.data[layout.RACKS] = (b"", 0)
    return zk


def list_nodes(app, query: str):
    with app.test_request_context(f"/v1/nodes?{query}"):
        from flask import request
        result = nodes.list_(fake_nodes(), list_query(request.args))
    return [n["name"] for n in result.body], result.headers.get("Link")


def test_nodes_are_paged(app):
    names, link = list_nodes(app, "limit=3")
    assert names == ["c1", "c2", "s1"]
    assert 'rel="next"' in link and "after=s1" in link and link.startswith("</v1/nodes?")
    assert list_nodes(app, "limit=3&after=s1") == (["s2"], None)


def test_nodes_filtered_by_role_and_rack(app):
    assert list_nodes(app, "label=role=storage")[0] == ["s1", "s2"]
    assert list_nodes(app, "label=role=compute&label=rack=r2")[0] == ["c2"]
    assert list_nodes(app, "label=colour=blue")[0] == []


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "limit=1001", "label=novalue"])
def test_nodes_reject_bad_list_parameters_before_zookeeper(tmp_path, query):
    tokens = tmp_path / "tokens"
    tokens.write_text("t0ken admin\n")
    app = create_app("127.0.0.1:1", str(tokens))
    app.extensions["cowfleet.zk"] = None     # any use of ZooKeeper would be a 500
    resp = app.test_client().get(f"/v1/nodes?{query}", headers={"Authorization": "Bearer t0ken"})
    assert resp.status_code == 422, resp.get_data(as_text=True)


def test_every_operation_has_a_summary_and_a_known_tag(doc):
    tags = {t["name"] for t in doc["tags"]}
    for path, method, op in operations(doc):
        assert op.get("summary"), (path, method)
        assert op.get("tags") and set(op["tags"]) <= tags, (path, method)


def test_the_document_itself_needs_no_token(app, doc):
    assert doc["paths"]["/v1/openapi.json"]["get"]["security"] == []
    # the service answers it without Authorization (no ZooKeeper needed)
    resp = app.test_client().get("/v1/openapi.json")
    assert resp.status_code == 200 and resp.json["info"]["title"] == "cowfleet"


def test_the_problem_schema_lists_every_problem_type():
    from cowfleet.protocol import ProblemType
    doc = openapi.build(create_app("127.0.0.1:1", None))
    listed = doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
    assert set(listed) == {v for k, v in vars(ProblemType).items() if k.isupper() and k != "PREFIX"}
    assert all(t == ProblemType.BLANK or t.startswith("urn:cowfleet:problem:") for t in listed)
