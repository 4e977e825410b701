"""Bad input over real HTTP: a clear 4xx problem+json, and nothing created."""
from __future__ import annotations

import pytest
import requests

from cowfleet.protocol import ProblemType
from cowfleet.zk import layout

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def put(lab, path, body, token="admin", content_type="application/json"):
    headers = {"Content-Type": content_type}
    if token == "admin":
        headers["Authorization"] = f"Bearer {lab.state.token}"
    elif token == "reader":
        headers["Authorization"] = f"Bearer {lab.state.reader_token}"
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    import json
    return requests.put(f"{lab.state.endpoint}{path}", data=json.dumps(body), headers=headers, timeout=10)


def assert_problem(resp, status, field=None, kind=ProblemType.INVALID):
    """``kind``: the problem type a field error must carry."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    if field:
        assert field in body["errors"], body
        assert body["type"] == kind, body


@pytest.mark.parametrize("body, status, field", [
    ({"image": "no-such-image", "flavor": "small", "size": 1}, 422, "image"),
    ({"image": "demo", "flavor": "no-such-flavor", "size": 1}, 422, "flavor"),
    ({"image": "demo", "flavor": "small", "size": -1}, 422, "size"),
    ({"image": "demo", "flavor": "small", "size": 10001}, 422, "size"),
    ({"image": "demo", "flavor": "small", "size": "3"}, 422, "size"),
    ({"image": "demo", "flavor": "small", "size": 1, "colour": "blue"}, 422, "colour"),
    ({"image": "demo", "flavor": "small", "size": 1, "placement": {"strategy": "random"}}, 422, "placement"),
    ({"flavor": "small", "size": 1}, 422, "image"),
])
def test_bad_group_spec_creates_nothing(lab, zk, image_demo, body, status, field):
    resp = put(lab, "/v1/instance-groups/bad", body)
    assert_problem(resp, status, field)
    assert not zk.exists(layout.group("bad"))
    # no request for it queued (other tests' requests are theirs)
    queued = [zk.get(f"{layout.REQUESTS}/{r}")[0] for r in zk.get_children(layout.REQUESTS)]
    assert not [q for q in queued if b'"group":"bad"' in q]


def test_bad_group_name(lab, zk, image_demo):
    resp = put(lab, "/v1/instance-groups/Bad_Name", {"image": "demo", "flavor": "small", "size": 1})
    assert_problem(resp, 422, "name")
    assert zk.get_children(layout.GROUPS) == [] or "Bad_Name" not in zk.get_children(layout.GROUPS)


def test_missing_and_wrong_token(lab, zk):
    body = {"image": "demo", "flavor": "small", "size": 1}
    resp = put(lab, "/v1/instance-groups/sneaky", body, token=None)
    assert_problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(put(lab, "/v1/instance-groups/sneaky", body, token="not-a-token"), 401)
    assert_problem(put(lab, "/v1/instance-groups/sneaky", body, token="reader"), 403)
    assert not zk.exists(layout.group("sneaky"))
    # a reader may read
    ok = requests.get(f"{lab.state.endpoint}/v1/instance-groups", timeout=10,
                      headers={"Authorization": f"Bearer {lab.state.reader_token}"})
    assert ok.status_code == 200


def test_not_json(lab, zk):
    assert_problem(put(lab, "/v1/images/x", "hello", content_type="text/plain"), 415)
    resp = requests.put(f"{lab.state.endpoint}/v1/images/x", data="{not json", timeout=10,
                        headers={"Authorization": f"Bearer {lab.state.token}",
                                 "Content-Type": "application/json"})
    assert_problem(resp, 400)
    assert not zk.exists(layout.image("x"))


def test_a_json_patch_is_415_and_a_patch_is_told_of_the_merge_patch(lab, client, image_demo, own_groups):
    own_groups.append("jp")
    client.put_group("jp", image="demo", flavor="small", size=0)
    resp = requests.patch(f"{lab.state.endpoint}/v1/instance-groups/jp", timeout=10,
                          data='[{"op": "replace", "path": "/size", "value": 2}]',
                          headers={"Authorization": f"Bearer {lab.state.token}",
                                   "Content-Type": "application/json-patch+json"})
    assert_problem(resp, 415)
    assert "merge patch" in resp.json()["detail"] and "application/merge-patch+json" in resp.json()["detail"]
    assert client.get_group("jp")["size"] == 0


@pytest.mark.parametrize("body, field", [
    ({"format": "vmdk"}, "format"),
    ({"min_replicas": 0}, "min_replicas"),
    ({"source_url": "ftp://example.invalid/x"}, "source_url"),
    ({"sizes": 3}, "sizes"),
])
def test_bad_image_spec_creates_nothing(lab, zk, body, field):
    assert_problem(put(lab, "/v1/images/bad-image", body), 422, field)
    assert not zk.exists(layout.image("bad-image"))


def test_unknown_route_and_method(lab):
    auth = {"Authorization": f"Bearer {lab.state.token}"}
    assert_problem(requests.get(f"{lab.state.endpoint}/v1/nothing", headers=auth, timeout=10), 404)
    assert_problem(requests.get(f"{lab.state.endpoint}/v1/instance-groups/absent", headers=auth,
                                timeout=10), 404)
    assert_problem(requests.post(f"{lab.state.endpoint}/v1/images/x", headers=auth, timeout=10), 405)
