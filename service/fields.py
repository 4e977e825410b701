"""Schema pieces shared by every resource."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate
from marshmallow import RAISE

from cowfleet.models import iso
from cowfleet.service.api import NAME_RE, NAME_RULE

Name = lambda **kw: fields.Str(validate=validate.Regexp(NAME_RE, error=NAME_RULE), **kw)  # noqa: E731


def Labels(**kw):
    return fields.Dict(keys=fields.Str(validate=validate.Length(1, 63)),
                       values=fields.Str(validate=validate.Length(0, 255)), **kw)


class Timestamp(fields.Field):
    """Epoch seconds in ZooKeeper, RFC 3339 UTC on the wire."""

    def _serialize(self, value, attr, obj, **kw):
        return iso(value)


class StrictSchema(Schema):
    """Input schemas reject unknown fields (contract: unknown fields -> 422)."""

    class Meta:
        unknown = RAISE


def require_positive_or_none(value):
    if value is not None and value < 1:
        raise ValidationError("must be at least 1")
