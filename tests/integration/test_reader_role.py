"""The reader role may read everything but tokens and write nothing: every write route
of the OpenAPI document answers 403 (problem+json) to a reader token, and
nothing changes."""
from __future__ import annotations

import re

import pytest
import requests

pytestmark = pytest.mark.integration

WRITES = ("put", "patch", "delete", "post")


def test_every_write_route_refuses_the_reader(lab, client, image_demo, own_groups):
    admin = {"Authorization": f"Bearer {lab.state.token}"}
    reader = {"Authorization": f"Bearer {lab.state.reader_token}"}
    doc = requests.get(f"{lab.state.endpoint}/v1/openapi.json", headers=admin, timeout=10).json()
    own_groups.append("reader-probe")     # deleted and waited for, whatever happens
    client.put_group("reader-probe", image="demo", flavor="small", size=0)
    before = client.get_group("reader-probe")["etag"]
    tried = []
    for path, ops in doc["paths"].items():
        for method in ops:
            if method not in WRITES:
                continue
            # existing objects where a name is asked for: a refusal must not depend on a 404
            url = re.sub(r"\{name\}", {"images": "demo", "flavors": "small", "nodes": "x",
                                        "instance-groups": "reader-probe"}.get(path.split("/")[2], "x"), path)
            url = re.sub(r"\{[^}]+\}", "x", url)
            body = {"size": 1} if method == "patch" else {"image": "demo", "flavor": "small", "size": 1}
            resp = requests.request(method.upper(), f"{lab.state.endpoint}{url}", json=body,
                                    headers=reader, timeout=10)
            tried.append(f"{method.upper()} {url}")
            assert resp.status_code == 403, (method, url, resp.status_code, resp.text)
            assert resp.headers["Content-Type"] == "application/problem+json"
    assert len(tried) >= 9, tried       # images, data, flavors, groups (put/patch/delete), network, nodes
    # and the token list is the admin's alone: a reader may not read it either
    for url in ("/v1/tokens", "/v1/tokens/x"):
        resp = requests.get(f"{lab.state.endpoint}{url}", headers=reader, timeout=10)
        assert resp.status_code == 403 and resp.headers["Content-Type"] == "application/problem+json"
    assert client.get_group("reader-probe")["etag"] == before
    assert client.get_image("demo")["status"] == "available"
