"""The OpenAPI 3 document, generated from the marshmallow schemas (apispec)
and the routes: each view's ``@endpoint`` records its schemas and statuses."""
from __future__ import annotations

import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

import cowfleet
from cowfleet.checksum import SHA256_PATTERN
from cowfleet.names import NAME_RE
from cowfleet.protocol import ProblemType
from cowfleet.service.preconditions import TAGS_PATTERN

PROBLEM = "application/problem+json"


PROBLEM_TYPES = sorted(v for k, v in vars(ProblemType).items() if k.isupper() and k != "PREFIX")


class ProblemSchema(Schema):
    type = fields.Str(metadata={
        "format": "uri", "enum": PROBLEM_TYPES,
        "description": "what went wrong, for programs to branch on (RFC 9457): about:blank when the "
                       "status says it all, else one of urn:cowfleet:problem:* (README, 'Problem types'; "
                       "later versions may add types); title and detail are for people and may be reworded"})
    title = fields.Str(required=True)
    status = fields.Int(required=True)
    detail = fields.Str()
    errors = fields.Dict(keys=fields.Str(), values=fields.Raw())


ERRORS = {
    "GET": (401, 403, 404, 422, 503),
    "PUT": (400, 401, 403, 409, 412, 413, 415, 422, 503),
    "PATCH": (400, 401, 403, 404, 409, 412, 413, 415, 422, 503),
    "DELETE": (401, 403, 404, 409, 412, 503),
    "POST": (400, 401, 403, 409, 413, 415, 422, 503),
}
# one tag per blueprint (resource), in the order a reader meets them
TAGS = [("images", "images", "Guest images: their spec, their bytes, their replicas"),
        ("flavors", "flavors", "Instance sizes"),
        ("groups", "instance-groups", "Instance groups, their instances and consoles"),
        ("nodes", "nodes", "The agents' compute and storage nodes"),
        ("network", "network", "The instance network"),
        ("tokens", "tokens", "API tokens (admin role only)")]
META_TAG = ("meta", "Health, metrics and this document (no token needed)")
REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Malformed JSON",
           401: "Missing or invalid bearer token", 403: "The token's role may not do this",
           404: "Not found", 409: "Conflict with the current state", 412: "If-Match does not match",
           413: "Body too large", 415: "Not JSON", 422: "Invalid input (errors name the fields)",
           429: "Too many uploads at once on this worker; retry after Retry-After",
           502: "A node's agent failed or did not answer", 503: "ZooKeeper unavailable; retry"}
LIST_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    {"name": "after", "in": "query", "schema": {"type": "string"}},
    {"name": "label", "in": "query",
     "schema": {"type": "array", "items": {"type": "string", "pattern": "^[^=]+="}},
     "style": "form", "explode": True,
     "description": "key=value; several are ANDed (nodes have no labels: they match role= and rack=)"},
]


def ecma(pattern: str) -> str:
    """A Python pattern as JSON Schema (ECMA-262) reads it: ``\\Z`` (end,
    no trailing newline) is ``$`` there; ECMA would read ``\\Z`` as a literal Z."""
    return pattern[:-2] + "$" if pattern.endswith("\\Z") else pattern


# a name in a path: what api.existing_name / check_name accept (cowfleet.names) (others: 404 or 422)
NAME_PARAM = {"type": "string", "pattern": ecma(NAME_RE.pattern), "minLength": 1, "maxLength": 63}
# what api.if_match() accepts (service/preconditions.py): *, or entity tags
IF_MATCH = {"name": "If-Match", "in": "header", "required": False,
            "description": 'The etag(s) the write is conditional on: "7" (also 7 or W/"7"), a list '
                           '"6", "7", or * (the object must exist); no match gets 412, nothing written',
            "schema": {"type": "string", "pattern": TAGS_PATTERN}}
ETAG_HEADER = {"description": 'the object\'s version, "7": send it back in If-Match to write on it',
               "schema": {"type": "string"}}
LINK_HEADER = {"description": '<...?limit=&after=...>; rel="next" while more items remain',
               "schema": {"type": "string"}}
IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False,
                 "description": "* : create only (412 if the object exists); or etags it must not be at",
                 "schema": {"type": "string", "pattern": TAGS_PATTERN}}


def merge_patch_schema(schema: dict, components: dict) -> dict:
    """The schema of a JSON merge patch (RFC 7386) of what ``schema``
    describes: at every depth each member is optional and may be null
    (null removes it), and nothing has a default (absent means unchanged).
    Arrays and scalars are replaced whole, so they keep their schema."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    out = {k: v for k, v in schema.items() if k not in ("required", "default")}
    if "properties" in out:
        out["properties"] = {k: dict(merge_patch_schema(v, components), nullable=True)
                             for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = dict(merge_patch_schema(out["additionalProperties"], components),
                                           nullable=True)
    return out


def _ecma_patterns(node):
    """Every ``pattern`` in the document, as ECMA-262 reads it."""
    if isinstance(node, dict):
        return {k: ecma(v) if k == "pattern" and isinstance(v, str) else _ecma_patterns(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_ecma_patterns(v) for v in node]
    return node


def _body_ref(spec: APISpec, api: dict) -> dict:
    """The request body's schema: the input schema, or for a merge patch its
    partial, nullable form (``<Name>Patch``)."""
    name = _name(api["body"])
    if name not in spec.components.schemas:
        spec.components.schema(name, schema=api["body"])
    if api["patch"]:
        whole, name = name, name + "Patch"
        if name not in spec.components.schemas:
            schemas = spec.components.schemas
            spec.components.schema(name, component=merge_patch_schema(schemas[whole], schemas))
    return {"$ref": f"#/components/schemas/{name}"}


def _name(schema: type[Schema]) -> str:
    return schema.__name__.removesuffix("Schema")


def build(app) -> dict:
    spec = APISpec(title="cowfleet", version=cowfleet.__version__, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Fleets of ephemeral copy-on-write VMs."})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Problem", schema=ProblemSchema)
    tag_of = {bp: tag for bp, tag, _ in TAGS}
    for tag, description in [t[1:] for t in TAGS] + [META_TAG]:
        spec.tag({"name": tag, "description": description})
    paths: dict[str, dict] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        api = getattr(view, "api", None)
        if api is None:
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            op: dict = {"operationId": rule.endpoint.replace(".", "_"), "security": [{"bearer": []}],
                        "tags": [tag_of[rule.endpoint.partition(".")[0]]], "responses": {}}
            # resource.crud_blueprint sets its views' docs after @endpoint saw them
            doc = api["doc"] or (view.__doc__ or "").strip()
            if doc:
                op["summary"] = doc.splitlines()[0]
            params = [{"name": a, "in": "path", "required": True,
                       "schema": NAME_PARAM if a == "name" else {"type": "string"}}
                      for a in sorted(rule.arguments)]
            if method in ("PUT", "PATCH", "DELETE") and rule.arguments:
                params.append(IF_MATCH)
            if method == "PUT" and rule.arguments and not api.get("raw_body"):
                params.append(IF_NONE_MATCH)
            own = list(api.get("query", ()))
            # a list that pages its own way (a group's events) documents its own parameters
            if api["many"] and not {p["name"] for p in own} & {p["name"] for p in LIST_PARAMS}:
                params += LIST_PARAMS
            params += own
            if api.get("raw_body"):
                params.append({"name": "X-Checksum-Sha256", "in": "header", "required": False,
                               "description": "SHA-256 of the body; a mismatch stores nothing (422)",
                               "schema": {"type": "string", "pattern": f"^{SHA256_PATTERN}$"}})
                op["requestBody"] = {"required": True, "content": {
                    api["raw_body"]: {"schema": {"type": "string", "format": "binary"}}}}
            if params:
                op["parameters"] = params
            if api["body"] is not None:
                ref = _body_ref(spec, api)
                media = "application/merge-patch+json" if api["patch"] else "application/json"
                op["requestBody"] = {"required": True, "content": {media: {"schema": ref}}}
            for code in api["codes"]:
                resp: dict = {"description": REASONS[code]}
                if api["out"] is not None and code != 204:
                    if _name(api["out"]) not in spec.components.schemas:
                        spec.components.schema(_name(api["out"]), schema=api["out"])
                    ref = {"$ref": f"#/components/schemas/{_name(api['out'])}"}
                    schema = {"type": "array", "items": ref} if api["many"] else ref
                    resp["content"] = {"application/json": {"schema": schema}}
                    resp["headers"] = {"Link": LINK_HEADER} if api["many"] else {"ETag": ETAG_HEADER}
                elif api.get("raw_out") and code != 204:
                    resp["content"] = {api["raw_out"]: {"schema": {"type": "string"}}}
                op["responses"][str(code)] = resp
            for code in sorted(set(ERRORS[method]) | set(api.get("errors", ()))):
                op["responses"][str(code)] = {
                    "description": REASONS[code],
                    "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            paths.setdefault(path, {})[method.lower()] = op
    for path, ops in sorted(paths.items()):
        spec.path(path=path, operations=ops)
    meta = {"security": [], "tags": [META_TAG[0]]}
    spec.path(path="/healthz", operations={"get": dict(meta, operationId="healthz",
              summary="Health: 200 while ZooKeeper is reachable",
              responses={"200": {"description": "ZooKeeper reachable"},
                         "503": {"description": "ZooKeeper unreachable"}})})
    spec.path(path="/metrics", operations={"get": dict(meta, operationId="metrics",
              summary="Prometheus metrics (text exposition format)",
              responses={"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}})})
    spec.path(path="/v1/openapi.json", operations={"get": dict(meta, operationId="openapi",
              summary="This document (open: it describes the API, it holds no data)",
              responses={"200": {"description": "OK",
                                 "content": {"application/json": {"schema": {"type": "object"}}}}})})
    return _ecma_patterns(spec.to_dict())
