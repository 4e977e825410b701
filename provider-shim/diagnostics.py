"""Diagnostics: what the provider tells Terraform went wrong, and where.

API validation errors arrive as problem+json ``errors: {field: [messages]}``
(nested for nested objects: ``{"placement": {"strategy": [...]}}``); each
message becomes one diagnostic whose attribute path names the field, so
Terraform underlines the line of the configuration at fault.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ERROR, WARNING = "ERROR", "WARNING"


@dataclass
class Diag:
    summary: str
    detail: str = ""
    # steps: str an attribute, int a list index, ("key", k) a map key
    path: list = field(default_factory=list)
    severity: str = ERROR


class ProviderError(Exception):
    """Stops an operation with these diagnostics (and, for apply, a state to keep)."""

    def __init__(self, diags: list[Diag], state=None):
        super().__init__("; ".join(d.summary for d in diags))
        self.diags = diags
        self.state = state


def _messages(errors) -> list[str]:
    """Every message of an error tree, flattened."""
    if isinstance(errors, dict):
        return [m for sub in errors.values() for m in _messages(sub)]
    if isinstance(errors, (list, tuple)):
        return [m for sub in errors for m in _messages(sub)]
    return [str(errors)]


def _typed_paths(errors, type_, prefix: list) -> list[tuple[list, str]]:
    """(path, message) pairs under one attribute of cty type ``type_``:
    marshmallow keys a list's errors by index and a dict's by key, then
    ``key`` or ``value`` (``{"bad key": {"key": [...]}}``); Terraform's path
    ends at the element (the map key), the key/value level is not a step."""
    kind = type_[0] if isinstance(type_, list) else None
    if isinstance(errors, dict) and kind in ("list", "set"):
        out = []
        for key, sub in errors.items():
            if str(key).isdigit() and kind == "list":
                out += _typed_paths(sub, type_[1], prefix + [int(key)])
            else:
                out += [(prefix, m) for m in _messages(sub)]
        return out
    if isinstance(errors, dict) and kind == "map":
        return [(prefix + [("key", str(key))], m) for key, sub in errors.items() for m in _messages(sub)]
    return [(prefix, m) for m in _messages(errors)]


def _field_paths(errors, block, prefix: list) -> list[tuple[list, str]]:
    """(path, message) pairs from a marshmallow-style error tree, the paths
    following the schema's blocks and attribute types."""
    if not isinstance(errors, dict):
        return [(prefix, m) for m in _messages(errors)]
    out = []
    for key, sub in errors.items():
        if key in ("_schema", "_root"):
            out += _field_paths(sub, block, prefix)
        elif block is not None and key in block.blocks:
            out += _field_paths(sub, block.blocks[key].block, prefix + [key])
        elif block is not None and key in block.attrs:
            out += _typed_paths(sub, block.attrs[key].type, prefix + [key])
        else:                      # a field the schema does not know: on its block
            out += [(prefix, f"{key}: {m}") for m in _messages(sub)]
    return out


def path_name(path: list) -> str:
    """An attribute path as Terraform spells it: placement.strategy, labels["k"], ssh_authorized_keys[0]."""
    return "".join(f"[{p!r}]" if isinstance(p, int) else f'["{p[1]}"]' if isinstance(p, tuple)
                   else ("." if i else "") + p for i, p in enumerate(path))


def from_validation(errors, block) -> list[Diag]:
    """Diagnostics for a marshmallow error tree (the API's own schemas run at plan)."""
    return [Diag(f"Invalid {path_name(path) or 'configuration'}", msg, path)
            for path, msg in _field_paths(errors, block, [])]


def from_api_error(exc, block, what: str) -> list[Diag]:
    """Diagnostics for an ``ApiError`` from the service, on the attributes at fault."""
    problem = getattr(exc, "problem", {}) or {}
    status = getattr(exc, "status", 0)
    title = problem.get("title") or f"HTTP {status}"
    detail = problem.get("detail") or title
    errors = problem.get("errors")
    if not errors:
        return [Diag(f"{what}: {title} ({status})", detail)]
    diags = []
    for path, msg in _field_paths(errors, block, []):
        name = path_name(path) or what
        diags.append(Diag(f"Invalid {name}" if status in (400, 422) else f"{title}: {name}",
                          f"{what}: {msg} ({detail}; HTTP {status})", path))
    return diags
