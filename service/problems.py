"""RFC 9457 problem+json errors: the only error shape the API returns.

Every problem the service raises carries a machine-readable ``type``
(``cowfleet.protocol.ProblemType``); title and detail are for people."""
from __future__ import annotations

from flask import Response, json
from werkzeug.exceptions import ClientDisconnected, HTTPException

from cowfleet.protocol import ProblemType

PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str = "",
                 errors: dict | None = None, headers: dict | None = None, *, type: str = ProblemType.BLANK):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers, self.type = errors, headers or {}, type

    def document(self) -> bytes:
        body = {"type": self.type, "title": self.title, "status": self.status,
                "detail": self.detail or self.title}
        if self.errors:
            body["errors"] = self.errors
        return json.dumps(body).encode()

    def response(self) -> Response:
        resp = Response(self.document(), status=self.status, mimetype=PROBLEM_TYPE)
        for k, v in self.headers.items():
            resp.headers[k] = v
        return resp


def not_found(kind: str, name: str) -> Problem:
    return Problem(404, "Not Found", f"{kind} '{name}' does not exist", type=ProblemType.NOT_FOUND)


def _tidy(errors):
    """marshmallow's error tree, with a map entry's ``{"key": [...], "value": [...]}``
    level folded into the entry: ``{"labels": {"a b": ["..."]}}``. Nested objects
    stay nested (``{"placement": {"strategy": [...]}}``)."""
    if not isinstance(errors, dict):
        return errors
    if errors and set(errors) <= {"key", "value"} and all(isinstance(v, list) for v in errors.values()):
        return [m for part in ("key", "value") for m in errors.get(part, [])]
    return {k: _tidy(v) for k, v in errors.items()}


def invalid(errors: dict, detail: str = "the request body is not valid") -> Problem:
    return Problem(422, "Unprocessable Entity", detail, errors=_tidy(errors), type=ProblemType.INVALID)


def conflict(type: str, detail: str, errors: dict | None = None) -> Problem:
    """A 409 of the given ``ProblemType``: the request clashes with the current state."""
    return Problem(409, "Conflict", detail, errors=errors, type=type)


def malformed(detail: str) -> Problem:
    return Problem(400, "Bad Request", detail, type=ProblemType.MALFORMED_BODY)


def unsupported_media_type(detail: str) -> Problem:
    return Problem(415, "Unsupported Media Type", detail, type=ProblemType.UNSUPPORTED_MEDIA_TYPE)


def unavailable(detail: str, retry_after: int | None = None) -> Problem:
    """A 503: the client should retry (after ``retry_after`` seconds, when given)."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return Problem(503, "Service Unavailable", detail, headers=headers, type=ProblemType.UNAVAILABLE)


def malformed_request(detail: str) -> Problem:
    """A 400: the HTTP request itself is broken (a chunk, a truncated body)."""
    return Problem(400, "Bad Request", detail, type=ProblemType.MALFORMED_REQUEST)


def too_many_uploads(limit: int, retry_after: int = 5) -> Problem:
    return Problem(429, "Too Many Requests",
                   f"this service worker streams at most {limit} uploads at a time; retry",
                   headers={"Retry-After": str(retry_after)}, type=ProblemType.TOO_MANY_UPLOADS)


# What gunicorn answers itself, before the app sees a request (its request
# line, header count and header size limits, a request it cannot parse):
# the HTTP status it picked, typed like our own problems.
SERVER_PROBLEM_TYPES = {400: ProblemType.MALFORMED_REQUEST, 414: ProblemType.REQUEST_LINE_TOO_LONG,
                        431: ProblemType.HEADERS_TOO_LARGE}


def server_error_bytes(status: int, reason: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response (status line, headers, problem+json body) for
    an error the server answers on its own, the connection closed after it."""
    body = Problem(status, reason, detail or reason, type=SERVER_PROBLEM_TYPES.get(status, ProblemType.BLANK)
                   ).document()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1", "replace") + body


def node_failed(detail: str) -> Problem:
    """A 502: a node the request needs is gone, did not answer, or failed."""
    return Problem(502, "Bad Gateway", detail, type=ProblemType.NODE_FAILED)


def from_http_exception(exc: HTTPException) -> Problem:
    headers = {}
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(exc.valid_methods)
    # werkzeug's own 413 (Content-Length over the limit) means what ours does
    kind = {413: ProblemType.BODY_TOO_LARGE, 415: ProblemType.UNSUPPORTED_MEDIA_TYPE}.get(exc.code, ProblemType.BLANK)
    if isinstance(exc, ClientDisconnected):     # the body ended before its Content-Length
        kind = ProblemType.MALFORMED_REQUEST
    return Problem(exc.code or 500, exc.name, exc.description or exc.name, headers=headers, type=kind)
