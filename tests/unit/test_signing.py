"""The cluster secret (cowfleet/config.py) and what it keys (cowfleet/signing.py):
P2P request signatures, their checks, and the ZooKeeper credentials."""
from __future__ import annotations

import hashlib
import os

import pytest
import requests

from cowfleet import config, signing
from cowfleet.signing import CHECKSUM, CONTENT, DATE, NONCE, UNSIGNED, P2PAuth, Refused, Verifier

SECRET = b"s3cret-of-the-unit-tests-0123456789"
NOW = 1_800_000_000.0


def signed(method: str, url: str, secret: bytes = SECRET, **kw) -> requests.PreparedRequest:
    """The request as requests would send it with the P2P session's auth."""
    req = requests.Request(method, url, auth=P2PAuth(lambda: secret), **kw)
    return requests.Session().prepare_request(req)


def check(verifier: Verifier, prep: requests.PreparedRequest, streamed: bool = False,
          body: bytes | None = None, path: str | None = None) -> None:
    split = requests.utils.urlparse(prep.url)
    sent = prep.body if isinstance(prep.body, bytes) else b""
    verifier.check(prep.method, path or signing.canonical_path(split.path, split.query), prep.headers,
                   lambda: sent if body is None else body, streamed=streamed)


@pytest.fixture
def verifier(monkeypatch):
    monkeypatch.setattr(signing.time, "time", lambda: NOW)
    v = Verifier(SECRET, clock=lambda: NOW - 600)      # a receiver up for a while
    v.clock = lambda: NOW
    return v


def test_a_signed_request_passes_once(verifier):
    prep = signed("POST", "http://10.0.0.1:7070/v1/offer", json={"flavor": "small"})
    assert prep.headers["Authorization"].startswith("CowfleetP2P ")
    assert prep.headers[CONTENT] == hashlib.sha256(prep.body).hexdigest()
    check(verifier, prep)
    with pytest.raises(Refused) as exc:
        check(verifier, prep)                   # the same request again: a replay
    assert exc.value.status == 403 and "replayed" in exc.value.detail
    check(verifier, signed("POST", "http://10.0.0.1:7070/v1/offer", json={"flavor": "small"}))   # a new nonce


def test_an_unsigned_request_is_a_401(verifier):
    prep = signed("POST", "http://h/v1/deploy", secret=None, json={"request": "1"})
    assert "Authorization" not in prep.headers
    with pytest.raises(Refused) as exc:
        check(verifier, prep)
    assert exc.value.status == 401


@pytest.mark.parametrize("skew", [-61, 61, -3600])
def test_outside_the_window_is_stale(verifier, monkeypatch, skew):
    monkeypatch.setattr(signing.time, "time", lambda: NOW + skew)
    with pytest.raises(Refused) as exc:
        check(verifier, signed("POST", "http://h/v1/deploy", json={"request": "1"}))
    assert exc.value.status == 403 and "stale" in exc.value.detail


def test_a_restarted_receiver_refuses_what_was_signed_before_it_started(monkeypatch):
    monkeypatch.setattr(signing.time, "time", lambda: NOW)
    prep = signed("POST", "http://h/v1/deploy", json={"request": "1"})     # signed at NOW
    with pytest.raises(Refused) as exc:
        check(Verifier(SECRET, clock=lambda: NOW + 5), prep)                 # started after it
    assert exc.value.status == 403 and "before this node started" in exc.value.detail
    check(Verifier(SECRET, clock=lambda: NOW), prep)                          # started in that second


def test_inside_the_window_passes(monkeypatch):
    verifier = Verifier(SECRET, clock=lambda: NOW - 100)      # started well before
    verifier.clock = lambda: NOW
    for skew in (-59, 59):
        monkeypatch.setattr(signing.time, "time", lambda: NOW + skew)
        check(verifier, signed("POST", "http://h/v1/deploy", json={"request": "1"}))


@pytest.mark.parametrize("tamper", ["method", "path", "query", "body", "date", "nonce", "checksum", "key"])
def test_anything_altered_is_refused(verifier, tamper):
    prep = signed("PUT" if tamper == "checksum" else "POST", "http://h/v1/rack-offers?x=1",
                  json={"request": "1"}, headers={CHECKSUM: "a" * 64} if tamper == "checksum" else {})
    body, path = None, None
    if tamper == "method":
        prep.method = "PUT"
    elif tamper == "path":
        path = "/v1/deploy?x=1"
    elif tamper == "query":
        path = "/v1/rack-offers?x=2"
    elif tamper == "body":
        body = b'{"request": "2"}'
    elif tamper == "date":
        prep.headers[DATE] = str(int(NOW) - 1)
    elif tamper == "nonce":
        prep.headers[NONCE] = "0" * 32
    elif tamper == "checksum":
        prep.headers[CHECKSUM] = "b" * 64
    elif tamper == "key":
        prep = signed("POST", "http://h/v1/rack-offers?x=1", secret=b"another-cluster's-secret-000000",
                      json={"request": "1"})
    with pytest.raises(Refused) as exc:
        check(verifier, prep, body=body, path=path)
    assert exc.value.status == 403
    assert ("the body is not" if tamper == "body" else "bad signature") in exc.value.detail


def test_streamed_bodies(verifier):
    """A generator body is signed UNSIGNED-PAYLOAD: only a streamed route
    takes it, and its body is never read by the check."""
    def chunks():
        yield b"x" * 10

    prep = signed("PUT", "http://h/v1/images/demo/data", data=chunks(), headers={CHECKSUM: "c" * 64})
    assert prep.headers[CONTENT] == UNSIGNED

    def never() -> bytes:
        raise AssertionError("a streamed body is not read")
    verifier.check("PUT", "/v1/images/demo/data", prep.headers, never, streamed=True)
    prep = signed("PUT", "http://h/v1/images/demo/data", data=chunks())
    with pytest.raises(Refused) as exc:
        check(verifier, prep, streamed=False)
    assert exc.value.status == 403 and UNSIGNED in exc.value.detail


def test_the_body_is_read_only_once_the_signature_holds(verifier):
    prep = signed("POST", "http://h/v1/offer", json={})
    prep.headers["Authorization"] = "CowfleetP2P " + "0" * 64

    def never() -> bytes:
        raise AssertionError("read before the signature was checked")
    with pytest.raises(Refused):
        verifier.check("POST", "/v1/offer", prep.headers, never)


def test_a_get_signs_the_empty_body(verifier):
    prep = signed("GET", "http://h/v1/images/demo/data")
    assert prep.headers[CONTENT] == signing.EMPTY_SHA256
    check(verifier, prep, streamed=True)


def test_the_replay_memory_forgets_what_is_stale(monkeypatch):
    clock = [NOW]
    monkeypatch.setattr(signing.time, "time", lambda: clock[0])
    v = Verifier(SECRET, clock=lambda: NOW - 600)
    v.clock = lambda: clock[0]
    for _ in range(3000):
        check(v, signed("POST", "http://h/v1/offer", json={}))
    clock[0] = NOW + 200                  # all 3000 are out of the window now
    for _ in range(3000):
        check(v, signed("POST", "http://h/v1/offer", json={}))
    assert len(v._seen) <= 3000           # the first 3000 were dropped on the way


def test_keys_are_derived_per_purpose():
    user, password = signing.zk_credentials(SECRET)
    assert user == "cowfleet" and len(password) == 64
    assert bytes.fromhex(password) != signing.p2p_key(SECRET)
    assert signing.zk_credentials(b"another secret of sixteen+") != (user, password)


def test_the_secret_comes_from_a_private_file(tmp_path, monkeypatch):
    monkeypatch.delenv(config.SECRET_FILE_VAR, raising=False)
    assert config.cluster_secret() is None                   # an open cluster
    path = config.write_secret(tmp_path / "secret")
    assert path.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv(config.SECRET_FILE_VAR, str(path))
    first = config.cluster_secret()
    assert first and len(first) >= 32
    config.write_secret(path, "x" * 20)
    assert config.cluster_secret() == b"x" * 20               # a new version is read again
    os.chmod(path, 0o644)
    with pytest.raises(config.SecretError, match="chmod 600"):
        config.cluster_secret()
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(config.SecretError, match="16 or more"):
        config.cluster_secret()
    monkeypatch.setenv(config.SECRET_FILE_VAR, str(tmp_path / "missing"))
    with pytest.raises(config.SecretError, match="cannot read"):
        config.cluster_secret()


def test_every_program_lists_the_variable():
    assert config.SECRET_FILE_VAR in config.AGENT_ENVIRONMENT
    assert config.SECRET_FILE_VAR in config.CLI_ENVIRONMENT


def test_an_agent_with_an_unusable_secret_file_stops_in_one_line(tmp_path, monkeypatch, capsys):
    from cowfleet.agents.main import main
    path = config.write_secret(tmp_path / "secret")
    os.chmod(path, 0o640)
    monkeypatch.setenv(config.SECRET_FILE_VAR, str(path))
    assert main(["--role", "storage", "--rack", "r1", "--zk", "127.0.0.1:9", "--name", "n1",
                 "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "readable by others" in err
    assert not (tmp_path / "state").exists()


def test_a_lab_takes_the_configured_secret_or_makes_its_own(tmp_path, monkeypatch):
    from cowfleet.lab.files import LabFiles
    lab = LabFiles()
    lab.dir = tmp_path / "lab"
    lab.dir.mkdir()
    monkeypatch.delenv(config.SECRET_FILE_VAR, raising=False)
    made = lab._make_secret().read_text()
    assert len(made.strip()) >= 32 and lab.secret_file.stat().st_mode & 0o777 == 0o600
    assert lab._make_secret().read_text() != made                 # a new lab, a new secret
    mine = config.write_secret(tmp_path / "operator", "the-operator's-own-secret")
    monkeypatch.setenv(config.SECRET_FILE_VAR, str(mine))
    assert lab._make_secret().read_text() == "the-operator's-own-secret\n"
    assert lab.secret_env()[config.SECRET_FILE_VAR] == str(lab.secret_file)
    # a shell that sourced an earlier lab's env names the lab's own file: a new one
    monkeypatch.setenv(config.SECRET_FILE_VAR, str(lab.secret_file))
    lab.secret_file.unlink()
    assert len(lab._make_secret().read_text().strip()) >= 32
