"""If-Match / If-None-Match as RFC 9110 §13.1 has them, against znode versions."""
from __future__ import annotations

import pytest

from cowfleet.service.preconditions import Precondition
from cowfleet.service.problems import Problem


def verdict(if_match, if_none_match, version):
    """'ok' or 412, for an object at ``version`` (None: it does not exist)."""
    try:
        pre = Precondition.from_headers(if_match, if_none_match)
        pre.check_missing("x") if version is None else pre.check(version, "x")
    except Problem as exc:
        return exc.status
    return "ok"


@pytest.mark.parametrize("if_match, if_none_match, version, want", [
    (None, None, None, "ok"), (None, None, 4, "ok"),
    ('"4"', None, 4, "ok"), ("4", None, 4, "ok"), ('W/"4"', None, 4, "ok"),
    ('"3"', None, 4, 412), ('"4"', None, None, 412),
    ('"1", "4"', None, 4, "ok"), ('"1", W/"2"', None, 4, 412),      # a list: any tag may match
    ("*", None, 4, "ok"), ("*", None, None, 412),                      # * : it must exist
    ('"²"', None, 4, 412), ('"abc"', None, None, 412),                 # tags that are no version
    ('"1,2"', None, 1, 412), ('"1,2", "3"', None, 3, "ok"),            # a comma inside a tag is the tag's
    (None, "*", None, "ok"), (None, "*", 0, 412),                      # create only
    (None, '"4"', 4, 412), (None, '"4"', 5, "ok"), (None, '"4"', None, "ok"),
])
def test_verdicts(if_match, if_none_match, version, want):
    assert verdict(if_match, if_none_match, version) == want


def test_only_version_tags_pin_a_write():
    assert Precondition.from_headers('"3"', None).pinned
    assert not Precondition.from_headers("*", None).pinned
    assert not Precondition.from_headers(None, "*").pinned
    assert Precondition.at(7) == Precondition(versions=frozenset({7}))


@pytest.mark.parametrize("if_match, says", [
    ('""', 'x is at version 4; If-Match names none of its versions (its etag now: "4")'),
    ('"3", "5"', 'x is at version 4, not "3", "5"'),
])
def test_a_412_says_the_version_and_what_was_asked(if_match, says):
    with pytest.raises(Problem) as exc:
        Precondition.from_headers(if_match, None).check(4, "x")
    assert exc.value.detail == says
