"""More of the v1 contract over real gunicorn: flavors, PATCH, lists, OpenAPI, metrics."""
from __future__ import annotations

import threading

import pytest
import requests

from cowfleet.client import ApiError
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def test_default_flavors_and_crud(client):
    names = [f["name"] for f in client.request("GET", "/v1/flavors").json()]
    assert {"small", "medium", "large"} <= set(names)
    created = client.request("PUT", "/v1/flavors/tiny", {"vcpus": 1, "memory_mib": 96, "disk_gib": 1})
    assert created.status_code == 201
    assert client.request("PUT", "/v1/flavors/tiny",
                          {"vcpus": 1, "memory_mib": 96, "disk_gib": 1}).status_code == 200
    changed = client.request("PUT", "/v1/flavors/tiny", {"vcpus": 1, "memory_mib": 112})
    assert changed.json()["memory_mib"] == 112 and changed.json()["etag"] != created.json()["etag"]
    with pytest.raises(ApiError) as err:
        client.request("PUT", "/v1/flavors/tiny", {"vcpus": 0, "memory_mib": 112})
    assert err.value.status == 422 and "vcpus" in err.value.problem["errors"]
    assert client.request("DELETE", "/v1/flavors/tiny").status_code == 204
    assert client.request("GET", "/v1/flavors/tiny", ok_404=True).status_code == 404


def test_flavor_in_use_cannot_be_deleted(client, image_demo):
    client.request("PUT", "/v1/flavors/held", {"vcpus": 1, "memory_mib": 128})
    client.put_group("flavor-user", image="demo", flavor="held", size=0)
    try:
        with pytest.raises(ApiError) as err:
            client.request("DELETE", "/v1/flavors/held")
        assert err.value.status == 409
    finally:
        client.delete_group("flavor-user")
        wait_until(lambda: client.get_group("flavor-user") is None, 30, "group gone")
        client.request("DELETE", "/v1/flavors/held")


def test_patch_merges_and_validates(client, image_demo):
    client.put_group("patchy", image="demo", flavor="small", size=0, labels={"a": "1", "b": "2"})
    try:
        resp = client.request("PATCH", "/v1/instance-groups/patchy", {"labels": {"b": None, "c": "3"}},
                              headers={"Content-Type": "application/merge-patch+json"})
        body = resp.json()
        assert body["labels"] == {"a": "1", "c": "3"}
        assert body["generation"] == 2 and body["size"] == 0 and body["image"] == "demo"
        with pytest.raises(ApiError) as err:
            client.request("PATCH", "/v1/instance-groups/patchy", {"size": -5})
        assert err.value.status == 422 and "size" in err.value.problem["errors"]
        with pytest.raises(ApiError) as err:
            client.request("PATCH", "/v1/instance-groups/patchy", {"size": 1}, headers={"If-Match": '"0"'})
        assert err.value.status == 412
        assert client.get_group("patchy")["size"] == 0
        with pytest.raises(ApiError) as err:
            client.request("PATCH", "/v1/instance-groups/nobody", {"size": 1})
        assert err.value.status == 404
    finally:
        client.delete_group("patchy")
        wait_until(lambda: client.get_group("patchy") is None, 30, "group gone")


def test_concurrent_patches_lose_no_update(client, image_demo):
    client.put_group("race", image="demo", flavor="small", size=0, labels={})
    try:
        def add(i):
            client.request("PATCH", "/v1/instance-groups/race", {"labels": {f"k{i}": "v"}})
        threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        g = client.get_group("race")
        assert g["labels"] == {f"k{i}": "v" for i in range(8)}
        assert g["generation"] == 9
    finally:
        client.delete_group("race")
        wait_until(lambda: client.get_group("race") is None, 30, "group gone")


def test_if_match_race_one_wins(client, image_demo):
    client.put_group("duel", image="demo", flavor="small", size=0)
    try:
        etag = client.request("GET", "/v1/instance-groups/duel").headers["ETag"]
        results = []
        barrier = threading.Barrier(6)      # all six writes leave together: a real race

        def write(team):
            barrier.wait()
            try:
                client.request("PUT", "/v1/instance-groups/duel",
                               {"image": "demo", "flavor": "small", "size": 0, "labels": {"team": team}},
                               headers={"If-Match": etag})
                results.append(200)
            except ApiError as exc:
                results.append(exc.status)
        threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [200] + [412] * 5
        assert client.get_group("duel")["generation"] == 2
    finally:
        client.delete_group("duel")
        wait_until(lambda: client.get_group("duel") is None, 30, "group gone")


def _race(n, write):
    """Run write(i) in n threads released together; returns [(status, title)]."""
    barrier, results = threading.Barrier(n), []

    def run(i):
        barrier.wait()
        try:
            results.append((write(i).status_code, None))
        except ApiError as exc:
            results.append((exc.status, exc.problem.get("title")))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_flavor_puts_without_if_match_all_succeed(client):
    try:
        results = _race(8, lambda i: client.request("PUT", "/v1/flavors/crowd",
                                                    {"vcpus": 1, "memory_mib": 128 + 16 * i}))
        assert sorted(status for status, _ in results) == [200] * 7 + [201], results
        final = client.request("GET", "/v1/flavors/crowd").json()
        assert final["memory_mib"] in {128 + 16 * i for i in range(8)}
        results = _race(8, lambda i: client.request("PUT", "/v1/flavors/crowd",
                                                    {"vcpus": 2, "memory_mib": 512 + 16 * i}))
        assert sorted(status for status, _ in results) == [200] * 8, results
    finally:
        client.request("DELETE", "/v1/flavors/crowd", ok_404=True)


def test_flavor_put_with_stale_if_match_is_precondition_failed(client):
    try:
        created = client.request("PUT", "/v1/flavors/duelling", {"vcpus": 1, "memory_mib": 128})
        etag = created.headers["ETag"]
        client.request("PUT", "/v1/flavors/duelling", {"vcpus": 1, "memory_mib": 144})
        with pytest.raises(ApiError) as err:
            client.request("PUT", "/v1/flavors/duelling", {"vcpus": 1, "memory_mib": 160},
                           headers={"If-Match": etag})
        assert (err.value.status, err.value.problem["title"]) == (412, "Precondition Failed")
        etag = client.request("GET", "/v1/flavors/duelling").headers["ETag"]
        results = _race(6, lambda i: client.request("PUT", "/v1/flavors/duelling",
                                                    {"vcpus": 1, "memory_mib": 256 + 16 * i},
                                                    headers={"If-Match": etag}))
        assert sorted(results) == [(200, None)] + [(412, "Precondition Failed")] * 5, results
    finally:
        client.request("DELETE", "/v1/flavors/duelling", ok_404=True)


def test_pagination_and_label_filter(client, image_demo, own_groups):
    # The lab is shared: other tests' groups (one still being deleted, a
    # leftover of a failure) sort before and after these names. A label of
    # this test's own selects its five groups, and paging is checked within
    # that selection (limit applies after the label filter; the next link
    # keeps the label).
    mine = "suite=pagination"
    for i in range(5):
        own_groups.append(f"page-{i}")
        client.put_group(f"page-{i}", image="demo", flavor="small", size=0,
                         labels={"suite": "pagination", "parity": "even" if i % 2 == 0 else "odd"})
    first = client.request("GET", f"/v1/instance-groups?limit=2&label={mine}")
    assert [g["name"] for g in first.json()] == ["page-0", "page-1"]
    link = first.headers["Link"]
    assert 'rel="next"' in link and "after=page-1" in link and "label=suite%3Dpagination" in link, link
    second = client.request("GET", f"/v1/instance-groups?limit=2&after=page-1&label={mine}").json()
    assert [g["name"] for g in second] == ["page-2", "page-3"]
    odd = client.request("GET", f"/v1/instance-groups?label=parity=odd&label={mine}").json()
    assert [g["name"] for g in odd] == ["page-1", "page-3"]
    last = client.request("GET", f"/v1/instance-groups?limit=2&after=page-3&label={mine}")
    assert [g["name"] for g in last.json()] == ["page-4"] and "Link" not in last.headers
    # unfiltered, pages of 2 hold every group once, in name order, these five among them
    names = [g["name"] for g in client.list_all("/v1/instance-groups", page_size=2)]
    assert names == sorted(set(names))
    assert [n for n in names if n in set(own_groups)] == own_groups


def test_nodes_are_paged_and_filtered_like_other_lists(lab, client):
    everyone = client.request("GET", "/v1/nodes").json()
    assert {n["role"] for n in everyone} == {"compute", "storage"}
    first = client.request("GET", "/v1/nodes?limit=1")
    assert [n["name"] for n in first.json()] == [sorted(n["name"] for n in everyone)[0]]
    assert 'rel="next"' in first.headers["Link"]
    storage = client.request("GET", "/v1/nodes?label=role=storage").json()
    assert storage and {n["role"] for n in storage} == {"storage"}
    with pytest.raises(ApiError) as err:
        client.request("GET", "/v1/nodes?limit=0")
    assert err.value.status == 422


def test_openapi_document(lab, client):
    doc = client.request("GET", "/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/images/{name}", "/v1/instance-groups/{name}", "/v1/flavors", "/v1/nodes"):
        assert path in doc["paths"], path
    group_put = doc["paths"]["/v1/instance-groups/{name}"]["put"]
    assert {"200", "201", "422", "412"} <= set(group_put["responses"])
    spec = doc["components"]["schemas"]["GroupSpec"]
    assert {"image", "flavor", "size"} <= set(spec["required"])
    assert spec["properties"]["size"]["maximum"] == 10000
    assert "patch" in doc["paths"]["/v1/instance-groups/{name}"]
    # the contract: /healthz, /metrics and this document are open (it holds no data); the data is not
    assert requests.get(f"{lab.state.endpoint}/v1/openapi.json", timeout=5).json() == doc
    assert requests.get(f"{lab.state.endpoint}/v1/flavors", timeout=5).status_code == 401


def test_metrics_open_and_counting(lab, client, image_demo):
    client.request("GET", "/v1/images/demo")
    text = requests.get(f"{lab.state.endpoint}/metrics", timeout=10).text
    assert 'cowfleet_http_requests_total{endpoint="/v1/images/<name>",method="GET",status="200"}' in text
    assert "cowfleet_http_request_duration_seconds_bucket" in text
    assert "cowfleet_instance_groups" in text
    assert 'cowfleet_instances{state="ready"}' in text
    assert requests.get(f"{lab.state.endpoint}/healthz", timeout=5).json()["status"] == "ok"


def test_client_follows_pages(client):
    one_by_one = client.list_all("/v1/flavors", page_size=1)
    assert [f["name"] for f in one_by_one] == [f["name"] for f in client.list_all("/v1/flavors")]
    assert {"small", "medium", "large"} <= {f["name"] for f in one_by_one}
