"""What a write's ``If-Match`` / ``If-None-Match`` asks for (RFC 9110 §13.1).

An object's ETag is its znode version (``"7"``). The service checks the
precondition against the version it read and then writes *on that version*,
so the check and the write are one atomic step in ZooKeeper.

- ``If-Match: "7"`` (also ``7``, ``W/"7"``, or a list ``"6", "7"``): the object
  must exist at one of those versions; a race lost meanwhile is 412;
- ``If-Match: *``: the object must exist, at any version;
- ``If-None-Match: *``: the object must not exist (create only);
  ``If-None-Match: "7"``: it must not be at that version.
Anything else about the object failing the precondition: 412, nothing written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from cowfleet.protocol import ProblemType
from cowfleet.service.problems import Problem


def precondition_failed(detail: str) -> Problem:
    return Problem(412, "Precondition Failed", detail, type=ProblemType.PRECONDITION_FAILED)


# an entity tag: "7" (any quoted opaque tag) or, leniently, bare digits 7;
# optionally weak (W/); a comma-separated list of them, or *
_TAG = r'(W/)?("[\x21\x23-\x7e]*"|[0-9]+)'
TAGS_PATTERN = rf"^(\*|{_TAG}(\s*,\s*{_TAG})*)$"
_TAGS_RE = re.compile(TAGS_PATTERN)


def _versions(raw: str) -> frozenset[int]:
    if not _TAGS_RE.match(raw.strip()):
        raise precondition_failed(f"'{raw}' is not an entity tag (\"7\"), a list of them, or *")
    out = set()
    # tokenised by the grammar, not split on commas ("1,2" is one opaque tag);
    # W/ is accepted and compared like a strong tag: our versions are exact
    for m in re.finditer(_TAG, raw):
        tag = m.group(2).strip('"')
        if tag.isascii() and tag.isdigit():
            out.add(int(tag))
    return frozenset(out)       # tags that are no version of ours can never match


@dataclass(frozen=True)
class Precondition:
    versions: frozenset[int] | None = None      # If-Match tags
    exists: bool = False                        # If-Match: *
    absent: bool = False                        # If-None-Match: *
    not_versions: frozenset[int] = frozenset()  # If-None-Match tags

    @classmethod
    def from_headers(cls, if_match: str | None, if_none_match: str | None) -> "Precondition":
        versions, exists, absent, not_versions = None, False, False, frozenset()
        if if_match is not None:
            if if_match.strip() == "*":
                exists = True
            else:
                versions = _versions(if_match)
        if if_none_match is not None:
            if if_none_match.strip() == "*":
                absent = True
            else:
                not_versions = _versions(if_none_match)
        return cls(versions, exists, absent, not_versions)

    @classmethod
    def at(cls, version: int) -> "Precondition":
        return cls(versions=frozenset([version]))

    @property
    def pinned(self) -> bool:
        """The client asked for given versions: a race lost meanwhile is 412, not retried."""
        return self.versions is not None

    def check_missing(self, label: str) -> None:
        """The object does not exist: may the write go ahead (and create it)?"""
        if self.versions is not None or self.exists:
            raise precondition_failed(f"{label} does not exist")

    def check(self, version: int, label: str) -> None:
        """The object exists at ``version``: may the write go ahead?"""
        if self.absent:
            raise precondition_failed(f"{label} already exists (If-None-Match: *)")
        if version in self.not_versions:
            raise precondition_failed(f"{label} is at version {version} (If-None-Match)")
        if self.versions is not None and version not in self.versions:
            if not self.versions:
                raise precondition_failed(f"{label} is at version {version}; If-Match names none of its "
                                          f'versions (its etag now: "{version}")')
            want = ", ".join(f'"{v}"' for v in sorted(self.versions))
            raise precondition_failed(f"{label} is at version {version}, not {want}")


ANY = Precondition()
