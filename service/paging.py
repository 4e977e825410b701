"""Lists: ``?limit=&after=&label=key=value`` on every collection.

A page is a JSON array in name order; when more remain, a ``Link: <...>;
rel="next"`` header carries the next page's query (the body stays a plain
array, easy for curl and scripts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlencode

from flask import request

from cowfleet.service.api import Result
from cowfleet.service.problems import invalid
from cowfleet.zk.connection import read

MAX_LIMIT = 1000


@dataclass
class ListQuery:
    limit: int = 100
    after: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.labels.items())


def list_query(args) -> ListQuery:
    """Parse and validate the list parameters; errors name the parameter."""
    raw = args.get("limit", "100")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise invalid({"limit": [f"must be an integer from 1 to {MAX_LIMIT}"]}, "invalid query parameter")
    labels = {}
    getlist = getattr(args, "getlist", None)
    selectors = getlist("label") if getlist else ([args["label"]] if "label" in args else [])
    for sel in selectors:
        key, eq, value = sel.partition("=")
        if not eq or not key:
            raise invalid({"label": [f"'{sel}' is not key=value"]}, "invalid query parameter")
        labels[key] = value
    return ListQuery(limit=int(raw), after=args.get("after") or None, labels=labels)


def _labels(record) -> dict[str, str]:
    return getattr(record, "labels", None) or {}


def page(zk, folder: str, path_of: Callable[[str], str], cls, view: Callable, q: ListQuery,
         labels_of: Callable[[object], dict[str, str]] = _labels) -> Result:
    """One page of ``folder``'s children; ``labels_of(record)`` is what
    ``label=`` selectors match (the record's own ``labels`` by default)."""
    names = sorted(n for n in zk.get_children(folder) if q.after is None or n > q.after)
    items, more = [], False
    for name in names:
        got = read(zk, path_of(name), cls)
        if got is None or not q.matches(labels_of(got[0])):
            continue
        if len(items) == q.limit:
            more = True
            break
        items.append(view(zk, *got))
    headers = {}
    if more:
        params = [("limit", q.limit), ("after", items[-1]["name"])] + [("label", f"{k}={v}")
                                                                      for k, v in q.labels.items()]
        headers["Link"] = f'<{request.path}?{urlencode(params)}>; rel="next"'
    return Result(items, headers=headers)
