"""Bearer tokens from a file, re-read when it changes; role permissions."""
from __future__ import annotations

import os

import pytest

from cowfleet.service.auth import TokenStore, allowed


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens"

    def write(text: str, mtime: float | None = None):
        path.write_text(text)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return str(path)
    write.path = str(path)
    return write


def test_roles_parsed(token_file):
    store = TokenStore(token_file("adm1n admin\nr3ad reader\n"))
    assert store.role_of("adm1n") == "admin"
    assert store.role_of("r3ad") == "reader"


def test_comments_and_blank_lines_ignored(token_file):
    store = TokenStore(token_file(
        "# the tokens\n\n   \nadm1n admin   # the operator\n  # indented comment\nr3ad reader\n"))
    assert store.role_of("adm1n") == "admin"
    assert store.role_of("r3ad") == "reader"
    assert store.role_of("#") is None
    assert store.role_of("the") is None
    assert store.role_of("") is None


def test_commented_out_token_is_not_valid(token_file):
    store = TokenStore(token_file("#old admin\nnew admin\n"))
    assert store.role_of("old") is None
    assert store.role_of("#old") is None
    assert store.role_of("new") == "admin"


def test_unknown_role_ignored(token_file):
    store = TokenStore(token_file("god superuser\nroot ADMIN\nok reader\n"))
    assert store.role_of("god") is None
    assert store.role_of("root") is None
    assert store.role_of("ok") == "reader"


def test_token_without_role_is_a_reader(token_file):
    store = TokenStore(token_file("lonely\n"))
    assert store.role_of("lonely") == "reader"


def test_extra_spaces_between_token_and_role(token_file):
    store = TokenStore(token_file("tok    admin  \n"))
    assert store.role_of("tok") == "admin"


def test_tab_separated_line(token_file):
    store = TokenStore(token_file("tok\tadmin\n"))
    assert store.role_of("tok") == "admin"


@pytest.mark.parametrize("given", ["wrong", "adm1", "adm1n ", " adm1n", "ADM1N", "adm1nx", "admin"])
def test_wrong_token(token_file, given):
    store = TokenStore(token_file("adm1n admin\n"))
    assert store.role_of(given) is None


def test_non_ascii_token(token_file):
    store = TokenStore(token_file("tøken admin\n"))
    assert store.role_of("tøken") == "admin"
    assert store.role_of("token") is None


def test_first_matching_line_wins(token_file):
    store = TokenStore(token_file("dup reader\ndup admin\n"))
    assert store.role_of("dup") == "reader"


def test_file_rewritten_new_tokens_take_effect(token_file):
    path = token_file("one admin\n", mtime=1_000_000)
    store = TokenStore(path)
    assert store.role_of("one") == "admin"
    token_file("two reader\n", mtime=1_000_010)
    assert store.role_of("one") is None
    assert store.role_of("two") == "reader"


def test_file_not_reread_while_unchanged(token_file):
    path = token_file("one admin\n", mtime=1_000_000)
    store = TokenStore(path)
    assert store.role_of("one") == "admin"
    # same mtime: the cached tokens stay (the file is only re-read on change)
    token_file("two admin\n", mtime=1_000_000)
    assert store.role_of("one") == "admin"


def test_missing_file(tmp_path):
    store = TokenStore(str(tmp_path / "nope"))
    assert store.role_of("anything") is None


def test_file_removed_revokes_all(token_file):
    path = token_file("one admin\n")
    store = TokenStore(path)
    assert store.role_of("one") == "admin"
    os.remove(path)
    assert store.role_of("one") is None
    token_file("one admin\n", mtime=2_000_000)
    assert store.role_of("one") == "admin"


@pytest.mark.parametrize("path", [None, ""])
def test_no_file_configured(path):
    assert TokenStore(path).role_of("x") is None


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_reader_may_read(method):
    assert allowed("reader", method)


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE", "get", "TRACE"])
def test_reader_may_not_write(method):
    assert not allowed("reader", method)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"])
def test_admin_may_do_all(method):
    assert allowed("admin", method)


@pytest.mark.parametrize("role", [None, "", "Admin", "root"])
def test_no_role_nothing_allowed(role):
    assert not allowed(role, "GET")


def test_tokens_are_admin_only_reads_included():
    for method in ("GET", "PUT", "POST", "DELETE"):
        assert allowed("admin", method, "/v1/tokens")
        assert not allowed("reader", method, "/v1/tokens")
        assert not allowed("reader", method, "/v1/tokens/ci")
    assert allowed("reader", "GET", "/v1/tokensx")          # a prefix of a segment is not the path
    assert allowed("reader", "GET", "/v1/images")
