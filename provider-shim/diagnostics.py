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


def _field_paths(errors, block, prefix: list) -> list[tuple[list, str]]:
    """(path, message) pairs from a marshmallow-style error tree."""
    out = []
    if isinstance(errors, (list, tuple)):
        for msg in errors:
            if isinstance(msg, (dict, list)):
                out += _field_paths(msg, block, prefix)
            else:
                out.append((prefix, str(msg)))
        return out
    if not isinstance(errors, dict):
        return [(prefix, str(errors))]
    for key, sub in errors.items():
        if key in ("_schema", "_root"):
            out += _field_paths(sub, block, prefix)
            continue
        if block is not None and key in block.attrs:
            step, inner = key, None
        elif block is not None and key in block.blocks:
            step, inner = key, block.blocks[key].block
        elif str(key).isdigit():
            step, inner = int(key), block
        else:
            step, inner = ("key", str(key)), None
        out += _field_paths(sub, inner, prefix + [step])
    return out


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
        name = "".join(f"[{p!r}]" if isinstance(p, int) else f'["{p[1]}"]' if isinstance(p, tuple)
                       else ("." if i else "") + p for i, p in enumerate(path)) or what
        diags.append(Diag(f"Invalid {name}" if status in (400, 422) else f"{title}: {name}",
                          f"{what}: {msg} ({detail}; HTTP {status})", path))
    return diags
