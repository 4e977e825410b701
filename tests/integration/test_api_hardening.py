"""What a careful user tries that the happy path does not: malformed URLs,
chunked bodies over the limit, every If-Match / If-None-Match form, loose
booleans, odd label keys, a rolling policy that cannot progress, flavors in
use, image data that is not its declared format; over real gunicorn."""
from __future__ import annotations

import http.client
import json
import select
import socket
import subprocess
from urllib.parse import urlsplit

import pytest
import requests

from cowfleet.protocol import ProblemType
from cowfleet.zk import layout
from tests.conftest import _workdir
from tests.helpers import wait_until
from tests.integration.test_bad_input import assert_problem, put

pytestmark = pytest.mark.integration


def auth(lab, **more):
    return dict({"Authorization": f"Bearer {lab.state.token}"}, **more)


@pytest.mark.parametrize("url", ["http://[::1", "http://[zz]/x", "http://]/x", "http://h:port/x",
                                 "file:///a\u0000b", "file:///a\nb"])
def test_malformed_source_url_is_422_not_500(lab, zk, url):
    assert_problem(put(lab, "/v1/images/bad-url", {"source_url": url}), 422, "source_url")
    assert not zk.exists(layout.image("bad-url"))


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_body_over_the_limit_is_413_read_by_a_client_still_sending(lab, zk, chunked):
    # 12 MiB, 12x the limit and more than loopback's socket buffers hold: the
    # client is still sending when the service answers. The service reads the
    # rest of the body first (up to 16 MiB), so Python's plain http.client,
    # which does not read an early answer, gets the 413 rather than a reset
    body = json.dumps({"format": "raw", "min_replicas": 1}).encode() + b" " * (12 << 20)
    ep = urlsplit(lab.state.endpoint)
    conn = http.client.HTTPConnection(ep.hostname, ep.port, timeout=30)
    conn.request("PUT", "/v1/images/chunky",
                 body=(body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body,
                 headers=auth(lab, **{"Content-Type": "application/json"}), encode_chunked=chunked)
    resp = conn.getresponse()
    assert resp.status == 413, resp.read()[:300]
    assert resp.getheader("Content-Type") == "application/problem+json"
    assert json.loads(resp.read())["type"] == ProblemType.BODY_TOO_LARGE
    assert not zk.exists(layout.image("chunky"))


def test_chunked_body_under_the_limit_is_fine(lab, zk):
    ep = urlsplit(lab.state.endpoint)
    small = json.dumps({"format": "raw", "min_replicas": 1}).encode()
    conn = http.client.HTTPConnection(ep.hostname, ep.port, timeout=30)
    conn.request("PUT", "/v1/images/chunky", body=iter([small]), encode_chunked=True,
                 headers=auth(lab, **{"Content-Type": "application/json"}))
    assert conn.getresponse().status == 201
    requests.delete(f"{lab.state.endpoint}/v1/images/chunky", headers=auth(lab), timeout=10)


def test_compressed_body_is_415(lab, zk):
    resp = requests.put(f"{lab.state.endpoint}/v1/flavors/zipped", data=b"\x1f\x8b...", timeout=10,
                        headers=auth(lab, **{"Content-Type": "application/json", "Content-Encoding": "gzip"}))
    assert_problem(resp, 415)


def test_every_precondition_form(lab, client):
    url = f"{lab.state.endpoint}/v1/flavors/pre"
    spec = {"vcpus": 1, "memory_mib": 64}
    h = auth(lab)
    # If-Match: * on something absent: 412, nothing made; If-None-Match: * creates
    assert_problem(requests.put(url, json=spec, headers=dict(h, **{"If-Match": "*"}), timeout=10), 412)
    assert client.request("GET", "/v1/flavors/pre", ok_404=True).status_code == 404
    made = requests.put(url, json=spec, headers=dict(h, **{"If-None-Match": "*"}), timeout=10)
    assert made.status_code == 201 and made.headers["ETag"] == '"0"'
    # create-only again: 412, unchanged
    assert_problem(requests.put(url, json=dict(spec, vcpus=2), headers=dict(h, **{"If-None-Match": "*"}),
                                timeout=10), 412)
    # a list of tags: any may match
    ok = requests.put(url, json=dict(spec, vcpus=2), headers=dict(h, **{"If-Match": '"5", "0"'}), timeout=10)
    assert ok.status_code == 200 and ok.json()["vcpus"] == 2 and ok.headers["ETag"] == '"1"'
    assert_problem(requests.put(url, json=dict(spec, vcpus=3), headers=dict(h, **{"If-Match": '"0", "7"'}),
                                timeout=10), 412)
    assert_problem(requests.put(url, json=dict(spec, vcpus=3), headers=dict(h, **{"If-Match": "7a"}),
                                timeout=10), 412)
    assert client.request("GET", "/v1/flavors/pre").json()["vcpus"] == 2
    # DELETE honours them too
    assert_problem(requests.delete(url, headers=dict(h, **{"If-Match": '"0"'}), timeout=10), 412)
    gone = requests.delete(url, headers=dict(h, **{"If-Match": 'W/"1"'}), timeout=10)
    assert gone.status_code == 204 and "Content-Type" not in gone.headers and gone.content == b""


def test_create_only_puts_of_images_and_groups(lab, client, image_demo):
    """If-None-Match: * on the PUT of an image and of a group (what the Terraform
    provider's creates send): 412 for a name that exists, even one being
    deleted, and nothing changed; a name that does not exist is created."""
    h = auth(lab, **{"If-None-Match": "*"})
    img = f"{lab.state.endpoint}/v1/images/demo"
    assert_problem(requests.put(img, json={"source_url": "file:///elsewhere.raw", "min_replicas": 2},
                                headers=h, timeout=10), 412)
    assert client.get_image("demo")["min_replicas"] == image_demo["min_replicas"]
    grp = f"{lab.state.endpoint}/v1/instance-groups/create-only"
    spec = {"image": "demo", "flavor": "small", "size": 0}
    try:
        assert requests.put(grp, json=spec, headers=h, timeout=10).status_code == 201
        assert_problem(requests.put(grp, json=dict(spec, labels={"a": "b"}), headers=h, timeout=10), 412)
        assert client.get_group("create-only")["labels"] == {}
        client.put_group("create-only", **dict(spec, size=1))   # an instance: the deletion takes a while
        wait_until(lambda: client.get_group("create-only")["instances"], 60, "an instance placed")
        client.delete_group("create-only")
        assert client.get_group("create-only")["status"]["phase"] == "deleting"
        assert_problem(requests.put(grp, json=spec, headers=h, timeout=10), 412)
    finally:
        client.delete_group("create-only")
        wait_until(lambda: client.get_group("create-only") is None, 120, "group create-only gone")


def test_data_upload_honours_if_match(lab, client):
    client.put_image("pre-data", format="raw", min_replicas=1)
    try:
        url = f"{lab.state.endpoint}/v1/images/pre-data/data"
        h = auth(lab, **{"Content-Type": "application/octet-stream"})
        assert_problem(requests.put(url, data=b"x" * 4096, headers=dict(h, **{"If-Match": '"99"'}),
                                    timeout=30), 412)
        assert client.get_image("pre-data")["sha256"] is None
        assert requests.put(url, data=b"x" * 4096, headers=dict(h, **{"If-Match": '"0"'}),
                            timeout=30).status_code == 200
    finally:
        client.delete_image("pre-data")


@pytest.mark.parametrize("value", ["yes", 1, "off", 0, None])
def test_booleans_are_json_booleans(lab, zk, image_demo, value):
    body = {"image": "demo", "flavor": "small", "size": 0, "persistent": value}
    assert_problem(put(lab, "/v1/instance-groups/boolish", body), 422, "persistent")
    assert not zk.exists(layout.group("boolish"))


@pytest.mark.parametrize("labels", [{"a=b": "v"}, {"a b": "v"}, {"": "v"}, {"-a": "v"}, {"a\u0000": "v"},
                                    {"ok": "tab\there"}, {f"k{i}": "v" for i in range(65)}])
def test_label_keys_and_values_are_checked(lab, zk, image_demo, labels):
    body = {"image": "demo", "flavor": "small", "size": 0, "labels": labels}
    resp = put(lab, "/v1/instance-groups/labelled", body)
    assert_problem(resp, 422, "labels")
    # a map entry's error is on the entry itself: {"labels": {"a b": [...]}}
    errors = resp.json()["errors"]["labels"]
    assert all(isinstance(v, list) and all(isinstance(m, str) for m in v)
               for v in (errors.values() if isinstance(errors, dict) else [errors]))
    assert not zk.exists(layout.group("labelled"))


def test_good_label_keys_pass(client, image_demo, own_groups):
    own_groups.append("labels-ok")    # deleted, and waited for: no deleting group left to the next test
    labels = {"app.kubernetes.io/name": "web", "tier": "", "a_b-c.d": "x y"}
    assert client.put_group("labels-ok", image="demo", flavor="small", size=0, labels=labels)["labels"] == labels


def test_update_policy_that_cannot_progress(lab, zk, image_demo):
    body = {"image": "demo", "flavor": "small", "size": 1, "update_policy": {"max_unavailable": 0, "max_surge": 0}}
    assert_problem(put(lab, "/v1/instance-groups/stuck", body), 422, "update_policy")
    assert not zk.exists(layout.group("stuck"))


def test_flavor_in_use_is_immutable_and_built_ins_stay(lab, client, image_demo):
    client.request("PUT", "/v1/flavors/used", {"vcpus": 1, "memory_mib": 128})
    client.put_group("uses-flavor", image="demo", flavor="used", size=0)
    try:
        resp = put(lab, "/v1/flavors/used", {"vcpus": 1, "memory_mib": 160})
        assert_problem(resp, 409)
        assert "uses-flavor" in resp.json()["detail"]
        assert put(lab, "/v1/flavors/used", {"vcpus": 1, "memory_mib": 128}).status_code == 200   # same: fine
        assert client.request("GET", "/v1/flavors/used").json()["memory_mib"] == 128
    finally:
        client.delete_group("uses-flavor")
        wait_until(lambda: client.get_group("uses-flavor") is None, 30, "group gone")
        client.request("DELETE", "/v1/flavors/used")
    for name in ("small", "medium", "large"):
        assert_problem(requests.delete(f"{lab.state.endpoint}/v1/flavors/{name}", headers=auth(lab), timeout=10),
                       409)


def test_metrics_content_type(lab):
    resp = requests.get(f"{lab.state.endpoint}/metrics", timeout=10)
    assert resp.headers["Content-Type"].count("charset") == 1, resp.headers["Content-Type"]


@pytest.fixture
def qcow2_master():
    d = _workdir("cowfleet-fmt-")
    path = d / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    raw = d / "zeros.raw"
    raw.write_bytes(b"\0" * (1 << 20))
    yield path, raw
    path.unlink()
    raw.unlink()
    d.rmdir()


def test_image_data_must_be_its_declared_format(lab, client, qcow2_master):
    qcow2, raw = qcow2_master
    # fetched: the storage agent refuses it, the image says why, no replica counts
    client.put_image("says-qcow2", source_url=f"file://{raw}", format="qcow2", min_replicas=1)
    client.put_image("says-raw", source_url=f"file://{qcow2}", format="raw", min_replicas=1)
    client.put_image("is-qcow2", source_url=f"file://{qcow2}", format="qcow2", min_replicas=1)
    try:
        for name, found in (("says-qcow2", "raw"), ("says-raw", "qcow2")):
            img = wait_until(lambda: (client.get_image(name) or {}).get("status") == "error" and client.get_image(name),
                             60, f"image {name} in error")
            assert f"the data is {found}" in img["message"] and img["replicas"] == []
        assert wait_until(lambda: client.get_image("is-qcow2")["status"] == "available", 60, "qcow2 available")
        # uploaded: 422 on format, nothing stored
        client.put_image("up-qcow2", format="qcow2", min_replicas=1)
        resp = requests.put(f"{lab.state.endpoint}/v1/images/up-qcow2/data", data=raw.read_bytes(), timeout=60,
                            headers=auth(lab, **{"Content-Type": "application/octet-stream"}))
        assert_problem(resp, 422, "format", kind=ProblemType.FORMAT_MISMATCH)
        assert client.get_image("up-qcow2")["sha256"] is None
    finally:
        for name in ("says-qcow2", "says-raw", "is-qcow2", "up-qcow2"):
            client.delete_image(name)


# -- limits: what an attacker can hit answers problem+json, and stores nothing --------

def _raw(lab, data: bytes, timeout: float = 30) -> http.client.HTTPResponse:
    """Send ``data`` as it is on a new connection; the answer."""
    ep = urlsplit(lab.state.endpoint)
    sock = socket.create_connection((ep.hostname, ep.port), timeout=timeout)
    sock.sendall(data)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    resp.body = resp.read()
    sock.close()
    return resp


def _assert_raw_problem(resp, status: int, kind: str) -> dict:
    assert resp.status == status, resp.body[:300]
    assert resp.getheader("Content-Type") == "application/problem+json", resp.body[:300]
    body = json.loads(resp.body)
    assert body["status"] == status and body["type"] == kind and body["title"] and body["detail"], body
    return body


@pytest.mark.parametrize("request_bytes, status, kind", [
    (b"GET /v1/images?after=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
     ProblemType.REQUEST_LINE_TOO_LONG),
    (b"GET /v1/images HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n",
     431, ProblemType.HEADERS_TOO_LARGE),
    (b"GET /v1/images HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431,
     ProblemType.HEADERS_TOO_LARGE),
    (b"HELLO THERE\r\n\r\n", 400, ProblemType.MALFORMED_REQUEST),
    (b"GET /v1/images HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400, ProblemType.MALFORMED_REQUEST),
], ids=["request-line", "header-count", "header-size", "request-line-garbage", "header-name"])
def test_server_limits_answer_problem_json(lab, request_bytes, status, kind):
    """gunicorn answers these before the app runs: as problem+json, not its HTML page."""
    _assert_raw_problem(_raw(lab, request_bytes), status, kind)


def test_malformed_chunk_is_400_and_creates_nothing(lab, zk):
    head = (f"PUT /v1/flavors/chunk-bad HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {lab.state.token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    resp = _raw(lab, head + b"5\r\n{\"vcp\r\nzz\r\nus\": 1}\r\n0\r\n\r\n")
    _assert_raw_problem(resp, 400, ProblemType.MALFORMED_REQUEST)
    assert not zk.exists(layout.flavor("chunk-bad"))


def _partials(lab, name: str) -> list:
    """Partial copies of image ``name`` on the lab's storage nodes."""
    return list(lab.dir.glob(f"nodes/*/images/{name}.*.partial"))


def _upload_head(lab, name: str, length: int, **more) -> bytes:
    lines = [f"PUT /v1/images/{name}/data HTTP/1.1", "Host: x", f"Authorization: Bearer {lab.state.token}",
             "Content-Type: application/octet-stream", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in more.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def upload_image(client):
    client.put_image("limits-up", format="raw", min_replicas=1)
    yield "limits-up"
    client.delete_image("limits-up")


def test_upload_larger_than_any_disk_is_413_before_a_byte_moves(lab, client, upload_image):
    # the body is never sent: the answer comes from the headers alone
    resp = _raw(lab, _upload_head(lab, upload_image, 1 << 60))
    _assert_raw_problem(resp, 413, ProblemType.IMAGE_TOO_LARGE)
    assert client.get_image(upload_image)["sha256"] is None
    assert not _partials(lab, upload_image)


def test_upload_with_a_malformed_chunk_stores_nothing(lab, client, upload_image):
    head = (f"PUT /v1/images/{upload_image}/data HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {lab.state.token}\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    good = b"".join(b"100000\r\n" + b"\x01" * (1 << 20) + b"\r\n" for _ in range(3))   # 3 MiB reach the node
    resp = _raw(lab, head + good + b"not-hex\r\n\r\n", timeout=60)
    _assert_raw_problem(resp, 400, ProblemType.MALFORMED_REQUEST)
    wait_until(lambda: not _partials(lab, upload_image), 30, "the storage node dropped the partial copy")
    img = client.get_image(upload_image)
    assert img["sha256"] is None and img["replicas"] == [], img


def test_upload_broken_off_stores_nothing(lab, client, upload_image):
    ep = urlsplit(lab.state.endpoint)
    sock = socket.create_connection((ep.hostname, ep.port), timeout=30)
    try:
        sock.sendall(_upload_head(lab, upload_image, 8 << 20) + b"\x01" * (2 << 20))
        wait_until(lambda: _partials(lab, upload_image), 30, "the upload under way on the storage node")
    finally:
        sock.close()         # 6 MiB short of its Content-Length
    wait_until(lambda: not _partials(lab, upload_image), 30, "the storage node dropped the partial copy")
    img = client.get_image(upload_image)
    assert img["sha256"] is None and img["replicas"] == [], img


def test_uploads_beyond_the_workers_slots_are_429(lab, client, upload_image):
    """Slow uploads take at most UPLOADS_PER_WORKER threads of each worker: the
    rest are refused at once (429 problem+json, Retry-After), and the API
    still answers; none of them leaves anything behind."""
    from cowfleet.service.images.views import UPLOADS_PER_WORKER
    held = lab.service_workers * UPLOADS_PER_WORKER
    ep = urlsplit(lab.state.endpoint)
    socks = []
    try:
        for _ in range(held + 4):
            sock = socket.create_connection((ep.hostname, ep.port), timeout=30)
            socks.append(sock)
            sock.sendall(_upload_head(lab, upload_image, 8 << 20) + b"\x01" * 65536)

        def answered():
            readable, _, _ = select.select(socks, [], [], 0.5)
            return len(readable) >= 4 and readable
        refused = wait_until(answered, 60, "the uploads beyond the slots answered")
        for sock in refused:
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            resp.body = resp.read(resp.length or 0)
            _assert_raw_problem(resp, 429, ProblemType.TOO_MANY_UPLOADS)
            assert int(resp.getheader("Retry-After")) > 0
        # the API still answers other requests meanwhile
        assert client.get_image(upload_image)["sha256"] is None
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: not _partials(lab, upload_image), 30, "the storage node dropped the partial copies")
    img = client.get_image(upload_image)
    assert img["sha256"] is None and img["replicas"] == [], img


@pytest.mark.parametrize("query", ["limit=1001", "limit=0", "limit=-1", "limit=" + "9" * 40, "limit=1e3"])
def test_list_limit_out_of_range_is_422_naming_it(lab, query):
    for collection in ("images", "instance-groups", "nodes"):
        resp = requests.get(f"{lab.state.endpoint}/v1/{collection}?{query}", headers=auth(lab), timeout=10)
        assert_problem(resp, 422, "limit")
