"""Flavors: named instance sizes. ``small``, ``medium`` and ``large`` exist by
default (created by the service on its first connection). Changing a flavor
affects instances placed afterwards, not running ones."""
from __future__ import annotations

from cowfleet.models import Flavor, Group
from cowfleet.service.api import Result, fetch
from cowfleet.service.paging import ListQuery, page
from cowfleet.service.problems import Problem, conflict
from cowfleet.service.upsert import create_or_update
from cowfleet.zk import layout
from cowfleet.zk.connection import read_children


def view(zk, flavor: Flavor, version: int) -> dict:
    return dict(flavor.to_dict(), etag=str(version))


def get(zk, name: str) -> dict:
    return view(zk, *fetch(zk, layout.flavor(name), Flavor, "flavor", name))


def list_(zk, q: ListQuery) -> Result:
    return page(zk, layout.FLAVORS, layout.flavor, Flavor, view, q)


def put(zk, name: str, spec: dict, expected: int | None) -> tuple[dict, bool]:
    """Create, confirm or update a flavor; returns (view, created)."""
    new = Flavor(name=name, **spec)

    def create() -> Flavor:
        zk.create(layout.flavor(name), new.to_bytes())
        return new

    flavor, version, created = create_or_update(zk, layout.flavor(name), Flavor, f"flavor '{name}'",
                                                expected, create,
                                                lambda current: None if current == new else new)
    return view(zk, flavor, version), created


def delete(zk, name: str, expected: int | None) -> None:
    got = fetch(zk, layout.flavor(name), Flavor, "flavor", name)
    if expected is not None and expected != got[1]:
        raise Problem(412, "Precondition Failed", f"flavor '{name}' is at version {got[1]}")
    users = [g.name for g, _ in read_children(zk, layout.GROUPS, Group) if g.flavor == name]
    if users:
        raise conflict(f"flavor '{name}' is used by instance group(s): {', '.join(users)}")
    zk.delete(layout.flavor(name), version=got[1])
