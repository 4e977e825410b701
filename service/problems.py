"""RFC 7807 problem+json errors: the only error shape the API returns."""
from __future__ import annotations

from flask import Response, json
from werkzeug.exceptions import HTTPException

PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str = "",
                 errors: dict | None = None, headers: dict | None = None):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers = errors, headers or {}

    def response(self) -> Response:
        body = {"type": "about:blank", "title": self.title, "status": self.status,
                "detail": self.detail or self.title}
        if self.errors:
            body["errors"] = self.errors
        resp = Response(json.dumps(body), status=self.status, mimetype=PROBLEM_TYPE)
        for k, v in self.headers.items():
            resp.headers[k] = v
        return resp


def not_found(kind: str, name: str) -> Problem:
    return Problem(404, "Not Found", f"{kind} '{name}' does not exist")


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
    return Problem(422, "Unprocessable Entity", detail, errors=_tidy(errors))


def conflict(detail: str, errors: dict | None = None) -> Problem:
    return Problem(409, "Conflict", detail, errors=errors)


def from_http_exception(exc: HTTPException) -> Problem:
    headers = {}
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(exc.valid_methods)
    return Problem(exc.code or 500, exc.name, exc.description or exc.name, headers=headers)
