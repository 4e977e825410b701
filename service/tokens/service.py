"""API tokens (admin role only): list, get, create, delete over the store in
ZooKeeper (cowfleet/tokens.py, which the service's auth reads). A token's
secret is in the create answer only; afterwards its name stands for it."""
from __future__ import annotations

from urllib.parse import urlencode

from flask import request

from cowfleet import tokens
from cowfleet.models import ApiToken, now
from cowfleet.protocol import ProblemType
from cowfleet.service.api import Result, existing_name
from cowfleet.service.paging import ListQuery
from cowfleet.service.preconditions import ANY, Precondition
from cowfleet.service.problems import conflict, invalid, not_found


def view(record: ApiToken, version: int) -> dict:
    return dict(record.to_dict(), expired=record.expired(), etag=str(version))


def get(zk, name: str) -> dict:
    found = tokens.find(zk, existing_name(name, "token"))
    if found is None:
        raise not_found("token", name)
    return view(*found[:2])


def list_(zk, q: ListQuery) -> Result:
    """By name, paginated like every list (service/paging.py); tokens have no
    labels, so a label selector matches none. Records are few (one a user or
    a pipeline), so all are read and the page cut here: their znodes are named
    by digest, not by name, which ``paging.page`` orders by."""
    items = []
    for record, version, _ in tokens.list_(zk):
        if (q.after is None or record.name > q.after) and q.matches({}):
            items.append(view(record, version))
    headers = {}
    if len(items) > q.limit:
        items = items[:q.limit]
        query = urlencode([("limit", q.limit), ("after", items[-1]["name"])])
        headers["Link"] = f'<{request.path}?{query}>; rel="next"'
    return Result(items, headers=headers)


def create(zk, name: str, spec: dict, pre: Precondition = ANY) -> dict:
    """A new token named ``name``; 409 if one has that name (delete it first:
    a secret cannot be confirmed or changed, only replaced). ``If-Match``
    fails (412): there is never a version to match; ``If-None-Match: *``
    makes the 409 a 412, as on every create-only PUT."""
    found = tokens.find(zk, name)
    if found is not None:
        pre.check(found[1], f"token '{name}'")
    else:
        pre.check_missing(f"token '{name}'")
    expires_at = spec.get("expires_at")
    expires = expires_at.timestamp() if expires_at is not None else None
    if spec.get("ttl") is not None:
        expires = now() + spec["ttl"]
    if expires is not None and expires <= now():
        raise invalid({"expires_at": ["is in the past"]}, "invalid expires_at")
    try:
        secret, record = tokens.create(zk, name, spec["role"], expires_at=expires)
    except tokens.TokenExists as exc:
        raise conflict(ProblemType.TOKEN_EXISTS, str(exc), {"name": [f"a token named '{name}' exists"]})
    return dict(view(record, 0), token=secret)     # a new znode's version is 0


def delete(zk, name: str, pre: Precondition = ANY) -> None:
    found = tokens.find(zk, existing_name(name, "token"))
    if found is None:
        raise not_found("token", name)
    pre.check(found[1], f"token '{name}'")
    if not tokens.revoke(zk, name):
        raise not_found("token", name)
