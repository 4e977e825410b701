"""The four thin views every named resource has (list, get, put, delete).

Each resource package supplies its ``service`` module (``list_``, ``get``,
``put``, ``delete``) and its schemas; the views only translate HTTP to those
calls, so they are written once here.
"""
from __future__ import annotations

from types import ModuleType

from flask import Blueprint, request
from marshmallow import Schema

from cowfleet.service.api import Result, check_name, endpoint, if_match, zk, zk_for_lists
from cowfleet.service.paging import list_query


def crud_blueprint(name: str, prefix: str, service: ModuleType, spec: type[Schema], out: type[Schema],
                   kind: str, delete_status: int = 204) -> Blueprint:
    bp = Blueprint(name, __name__, url_prefix=prefix)
    a_kind = ("an " if kind[0] in "aeiou" else "a ") + kind

    @endpoint(out=out, many=True)
    def list_all():
        q = list_query(request.args)      # validated before ZooKeeper is touched
        return service.list_(zk_for_lists(), q)
    list_all.__doc__ = f"List {kind}s (paginated, filter by label)."

    @endpoint(out=out)
    def get_one(name):
        return service.get(zk(), name)
    get_one.__doc__ = f"Get one {kind}."

    @endpoint(body=spec, out=out, codes=(200, 201))
    def put_one(name, data):
        check_name(name)
        obj, created = service.put(zk(), name, data, if_match())
        return Result(obj, 201 if created else 200)
    put_one.__doc__ = f"Create {a_kind}, or update it (the same spec again changes nothing)."

    @endpoint(codes=(delete_status,))
    def delete_one(name):
        service.delete(zk(), name, if_match())
        return Result(None, delete_status)
    delete_one.__doc__ = f"Delete {a_kind}."

    bp.add_url_rule("", "list", list_all, methods=["GET"])
    bp.add_url_rule("/<name>", "get", get_one, methods=["GET"])
    bp.add_url_rule("/<name>", "put", put_one, methods=["PUT"])
    bp.add_url_rule("/<name>", "delete", delete_one, methods=["DELETE"])
    return bp
