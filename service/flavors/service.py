"""Flavors: named instance sizes. ``small``, ``medium`` and ``large`` exist by
default (created by the service on its first connection) and cannot be
deleted. A flavor in use by a group cannot change either (409): running
instances keep the size they were made with, so resizing is a new flavor and
a change of the group's flavor, which replaces the instances rolling."""
from __future__ import annotations

from cowfleet.models import DEFAULT_FLAVORS, Flavor
from cowfleet.service.api import Result, fetch
from cowfleet.service.paging import ListQuery, page
from cowfleet.service.preconditions import ANY, Precondition
from cowfleet.protocol import ProblemType
from cowfleet.service.problems import conflict
from cowfleet.service.upsert import Guarded, create_or_update, delete_unless_used, users_of
from cowfleet.zk import layout
from cowfleet.zk.connection import commit


BUILT_IN = frozenset(f.name for f in DEFAULT_FLAVORS)


def view(zk, flavor: Flavor, version: int) -> dict:
    return dict(flavor.to_dict(), etag=str(version))


def get(zk, name: str) -> dict:
    return view(zk, *fetch(zk, layout.flavor(name), Flavor, "flavor", name))


def list_(zk, q: ListQuery) -> Result:
    return page(zk, layout.FLAVORS, layout.flavor, Flavor, view, q)


def put(zk, name: str, spec: dict, pre: Precondition = ANY) -> tuple[dict, bool]:
    """Create, confirm or update a flavor; returns (view, created)."""
    new = Flavor(name=name, **spec)

    def create() -> Flavor:
        tx = zk.transaction()
        tx.create(layout.flavor(name), new.to_bytes())
        tx.create(layout.users_guard(layout.flavor(name)), b"")
        commit(tx)
        return new

    def update(current: Flavor) -> Flavor | None:
        if current == new:
            return None
        # running instances keep the size they were made with, so a flavor in
        # use is immutable; a new flavor and a change of the groups' flavor
        # (a rolling replacement) resizes them
        guard, in_use = users_of(zk, "flavor", name, layout.flavor(name))
        if in_use:
            raise conflict(ProblemType.FLAVOR_IN_USE,
                           f"flavor '{name}' is used by instance group(s) {', '.join(in_use)}: create a "
                           "new flavor and change the groups' flavor to it (a rolling replacement)")
        # written only while the guard is where the check read it: a group
        # made meanwhile fails the write, and the next round sees the group
        return new if guard is None else Guarded(new, ((layout.users_guard(layout.flavor(name)), guard),))

    flavor, version, created = create_or_update(zk, layout.flavor(name), Flavor, f"flavor '{name}'",
                                                pre, create, update)
    return view(zk, flavor, version), created


def delete(zk, name: str, pre: Precondition = ANY) -> None:
    def built_in() -> None:
        if name in BUILT_IN:
            raise conflict(ProblemType.FLAVOR_BUILT_IN,
                           f"flavor '{name}' is built in (small, medium and large always exist)")
    delete_unless_used(zk, layout.flavor(name), Flavor, "flavor", name, pre, refuse=built_in)
