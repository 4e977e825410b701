from flask import Blueprint, request

from cowfleet.service.api import Result, check_name, endpoint, if_match, zk
from cowfleet.service.paging import list_query
from cowfleet.service.tokens import service
from cowfleet.service.tokens.schemas import TokenCreatedSchema, TokenCreateSchema, TokenSchema, TokenSpecSchema

# admin role only, reads too (service/auth.py ADMIN_ONLY): a token list is a map of who may do what
bp = Blueprint("tokens", __name__, url_prefix="/v1/tokens")


@bp.get("")
@endpoint(out=TokenSchema, many=True)
def list_tokens():
    """List API tokens (never their secrets; admin role only)."""
    return service.list_(zk(), list_query(request.args))


@bp.post("")
@endpoint(body=TokenCreateSchema, out=TokenCreatedSchema, codes=(201,))
def post_token(data):
    """Create a token named in the body; the answer holds the secret, shown this once."""
    name = data.pop("name")
    return Result(service.create(zk(), name, data), 201)


@bp.get("/<name>")
@endpoint(out=TokenSchema)
def get_token(name):
    """Get one token (its role, expiry, last use; never the secret)."""
    return service.get(zk(), name)


@bp.put("/<name>")
@endpoint(body=TokenSpecSchema, out=TokenCreatedSchema, codes=(201,))
def put_token(name, data):
    """Create a token; the answer holds the secret, shown this once (409 if the name is taken)."""
    check_name(name)
    return Result(service.create(zk(), name, data, if_match()), 201)


@bp.delete("/<name>")
@endpoint(codes=(204,))
def delete_token(name):
    """Revoke a token: every worker refuses it within moments."""
    service.delete(zk(), name, if_match())
    return Result(None, 204)
