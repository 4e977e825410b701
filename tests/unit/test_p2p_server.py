"""The agents' one P2P server (agents/p2p_server.py): JSON routes, raw
routes and the storage agent's data route on one werkzeug routing Map,
with the answers the agents gave before it (a wrong method on a JSON route
is a 404, on the data route a 405; a JSON route that raises is a 500)."""
from __future__ import annotations

import logging

import pytest
import requests
from kazoo.exceptions import ConnectionLoss
from werkzeug.test import Client
from werkzeug.wrappers import Request

from cowfleet.agents.p2p_server import P2PServer, json_answer
from cowfleet.agents.storage.copy_store import CopyStore
from cowfleet.agents.storage.data_server import DataServer
from cowfleet.protocol import ProblemType, image_data_path


@pytest.fixture
def server(tmp_path):
    s = P2PServer(logging.getLogger("test.p2p"))
    s.route("/healthz", lambda request: json_answer({"status": "ok"}))

    def echo(body):
        return 201, {"got": body}

    def boom(body):
        raise KeyError("want")

    def cut_off(body):
        raise ConnectionLoss("n1 is not connected to ZooKeeper")
    s.json_route("/v1/echo", echo)
    s.json_route("/v1/boom", boom)
    s.json_route("/v1/cut-off", cut_off)
    copies = CopyStore(tmp_path / "images")
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    copies.path("web-1").write_bytes(b"abc")
    DataServer("s1", copies, lambda name: None, None, None).add_routes(s)
    return Client(Request.application(s.respond))


def test_json_routes(server):
    r = server.post("/v1/echo", json={"a": 1})
    assert (r.status_code, r.json, r.mimetype) == (201, {"got": {"a": 1}}, "application/json")
    r = server.post("/v1/echo", data=b"[1]")
    assert (r.status_code, r.mimetype) == (400, "application/problem+json")
    assert r.json["detail"] == "send a JSON object"
    r = server.post("/v1/boom", json={})
    assert (r.status_code, r.json["detail"]) == (500, "KeyError: 'want'")
    r = server.post("/v1/cut-off", json={})       # no ZooKeeper: unavailable, not broken
    assert (r.status_code, r.json["detail"]) == (503, "ConnectionLoss: n1 is not connected to ZooKeeper")
    # a JSON route is POST only; any other method is no route at all
    r = server.get("/v1/echo")
    assert (r.status_code, r.json, r.mimetype) == (404, {"title": "Not Found", "status": 404},
                                                   "application/problem+json")
    for path in ("/v1/nothing", "/v1/echo/", "/v1//echo"):
        assert server.post(path, json={}).status_code == 404, path


def test_raw_routes_take_every_method(server):
    for method in ("GET", "POST", "HEAD"):
        assert server.open("/healthz", method=method).status_code == 200


def test_the_data_route(server):
    r = server.get(image_data_path("web-1"))
    assert (r.status_code, r.data, r.headers["Content-Length"]) == (200, b"abc", "3")
    r = server.get(image_data_path("web-2"))
    assert (r.status_code, r.json["type"]) == (404, ProblemType.NOT_FOUND)
    r = server.put(image_data_path("web-2"), data=b"x")     # no such image record
    assert (r.status_code, r.json["type"]) == (404, ProblemType.NOT_FOUND)
    for method in ("POST", "DELETE", "HEAD"):
        r = server.open(image_data_path("web-1"), method=method)
        assert r.status_code == 405, method
        if method != "HEAD":
            assert r.json["detail"] == "use GET or PUT"
    # a name the API refuses is no data path
    r = server.get(image_data_path("web-"))
    assert (r.status_code, r.json) == (404, {"title": "Not Found", "status": 404})


def test_calls_never_go_through_a_proxy_of_the_environment(monkeypatch):
    """A node's HTTP_PROXY (for its own outbound traffic) does not carry
    the cluster's calls: here it names a closed port, so a call that went
    through it would fail."""
    import socket
    import threading

    from cowfleet import p2p
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))          # bound, never listening: a connection is refused
    proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, proxy)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    s = P2PServer(logging.getLogger("test.p2p"))
    s.json_route("/v1/echo", lambda body: (200, {"got": body}))
    url = s.serve("127.0.0.1:0")
    got = []
    try:
        t = threading.Thread(target=lambda: got.append(p2p.post(url, "/v1/echo", {"a": 1})))   # a new thread: a new session
        t.start()
        t.join(10)
    finally:
        s.shutdown()
        closed.close()
    assert got == [{"got": {"a": 1}}]


def test_a_call_is_signed_with_the_cluster_secret_and_fails_as_requests_would(tmp_path, monkeypatch):
    """``p2p.post`` over urllib3: signed so a closed agent takes it, refused by
    an agent of another cluster, and its failures are requests' exceptions
    (what the callers catch) with the outcome the metrics label them by."""
    import socket

    import requests

    from cowfleet import p2p
    from cowfleet.config import SECRET_FILE_VAR
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    secret.chmod(0o600)
    monkeypatch.setenv(SECRET_FILE_VAR, str(secret))
    outcomes = []
    monkeypatch.setattr(p2p, "_observers", [lambda route, s, outcome: outcomes.append((route, outcome))])
    ours, theirs = (P2PServer(logging.getLogger("test.p2p"), secret=key) for key in (b"s" * 32, b"t" * 32))
    for s in (ours, theirs):
        s.json_route("/v1/echo", lambda body: (200, {"got": body}))
        s.json_route("/v1/busy", lambda body: (409, {"detail": "not now"}))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)                      # accepts, never answers
    ours_url, theirs_url = ours.serve("127.0.0.1:0"), theirs.serve("127.0.0.1:0")
    try:
        assert p2p.post(ours_url, "/v1/echo", {"a": [1, "b"]}) == {"got": {"a": [1, "b"]}}
        with pytest.raises(requests.HTTPError, match="409") as busy:
            p2p.post(ours_url, "/v1/busy", {})
        assert busy.value.response.status_code == 409 and busy.value.response.json() == {"detail": "not now"}
        with pytest.raises(ValueError):
            p2p.post(ours_url, "/v1/echo", {"x": float("nan")})      # no JSON: refused before the call
        with pytest.raises(requests.HTTPError, match="403"):
            p2p.post(theirs_url, "/v1/echo", {})
        with pytest.raises(requests.ReadTimeout):
            p2p.post(f"http://127.0.0.1:{silent.getsockname()[1]}", "/v1/echo", {}, timeout=0.3)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))        # bound, not listening: refused
        with pytest.raises(requests.ConnectionError):
            p2p.post(f"http://127.0.0.1:{closed.getsockname()[1]}", "/v1/echo", {})
        closed.close()
    finally:
        ours.shutdown()
        theirs.shutdown()
        silent.close()
    assert [o for _, o in outcomes] == ["ok", "409", "ValueError", "403", "ReadTimeout", "ConnectionError"]


def test_the_server_follows_what_the_routes_need(tmp_path):
    """JSON routes only (a compute agent): waitress, which keeps connections;
    a route that streams its request body (the storage agent's upload):
    werkzeug's server, which hands the body over as it comes."""
    import urllib3

    json_only = P2PServer(logging.getLogger("test.p2p"))
    json_only.json_route("/v1/echo", lambda body: (200, {"got": body}))
    streaming = P2PServer(logging.getLogger("test.p2p"))
    streaming.json_route("/v1/echo", lambda body: (200, {"got": body}))
    copies = CopyStore(tmp_path / "images")
    DataServer("s1", copies, lambda name: None, None, None).add_routes(streaming)
    urls = [s.serve("127.0.0.1:0") for s in (json_only, streaming)]
    try:
        assert (json_only.server, streaming.server) == ("waitress", "werkzeug")
        with urllib3.PoolManager(retries=False) as pm:
            kept, closed = (pm.request("POST", url + "/v1/echo", json={"a": 1}) for url in urls)
        assert (kept.status, kept.json()) == (200, {"got": {"a": 1}})
        assert kept.headers.get("Connection", "keep-alive").lower() != "close"
        assert (closed.status, closed.headers["Connection"].lower()) == (200, "close")
    finally:
        json_only.shutdown()
        streaming.shutdown()
    for s, url in zip((json_only, streaming), urls):
        s.shutdown()                      # a second time: nothing (a test's finally often does)
        assert s.server in ("waitress", "werkzeug")
        with pytest.raises(urllib3.exceptions.HTTPError):    # the port is closed when it returns
            urllib3.PoolManager(retries=False).request("POST", url + "/v1/echo", json={})


def test_a_call_the_peer_drops_is_made_once_more_on_a_new_connection():
    """A kept connection the peer closes as the call goes out (its idle
    timeout, a restart): the call is made again on a new one -- once."""
    import socket
    import threading

    from cowfleet import p2p
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    seen = []

    def read_request(conn) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += conn.recv(65536)
        return head.split(b"\r\n", 1)[0]

    def serve(dropped: int, answered: int):
        """The first ``dropped`` connections closed under their call, then answers."""
        for i in range(dropped + answered):
            conn, _ = listener.accept()
            with conn:
                seen.append(read_request(conn))
                if i >= dropped:
                    body = b'{"ok": true}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        for dropped, answered in ((1, 1), (2, 0)):
            seen.clear()
            t = threading.Thread(target=serve, args=(dropped, answered), daemon=True)
            t.start()
            if answered:
                assert p2p.post(url, "/v1/echo", {"a": 1}) == {"ok": True}
            else:                                  # dropped twice: the caller hears of it
                with pytest.raises(requests.ConnectionError):
                    p2p.post(url, "/v1/echo", {"a": 1})
            t.join(10)
            assert seen == [b"POST /v1/echo HTTP/1.1"] * 2
    finally:
        listener.close()


def test_calls_reuse_a_kept_connection_and_survive_a_restarted_peer():
    """``p2p.post`` calls a peer over one kept connection, whatever thread
    calls; a peer restarted on the same port (its kept connections closed)
    is called on a new one, and the call succeeds -- no error to count."""
    import threading

    from cowfleet import p2p
    first = P2PServer(logging.getLogger("test.p2p"))
    first.json_route("/v1/echo", lambda body: (200, {"by": "first"}))
    url = first.serve("127.0.0.1:0")
    port = int(url.rsplit(":", 1)[1])
    pool = p2p._peers.connection_from_url(url)
    made = pool.num_connections
    try:
        for _ in range(3):
            assert p2p.post(url, "/v1/echo", {}) == {"by": "first"}
        got = []
        t = threading.Thread(target=lambda: got.append(p2p.post(url, "/v1/echo", {})))
        t.start()
        t.join(10)
        assert got == [{"by": "first"}]
        assert pool.num_connections - made == 1          # four calls, two threads, one connection
    finally:
        first.shutdown()
    second = P2PServer(logging.getLogger("test.p2p"))
    second.json_route("/v1/echo", lambda body: (200, {"by": "second"}))
    assert second.serve(f"127.0.0.1:{port}") == url
    try:
        # urllib3 found the kept connection closed and connected it anew
        assert p2p.post(url, "/v1/echo", {}) == {"by": "second"}
    finally:
        second.shutdown()
