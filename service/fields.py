"""Schema pieces shared by every resource."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate
from marshmallow import RAISE

from cowfleet.models import iso
from cowfleet.service.api import NAME_RE, NAME_RULE

Name = lambda **kw: fields.Str(validate=validate.Regexp(NAME_RE, error=NAME_RULE), **kw)  # noqa: E731


# Label keys and values as Kubernetes spells them: a key is 1-63 letters,
# digits, '-', '_', '.' and '/', starting and ending alphanumeric (so never '='
# or a space, which would make ``?label=k=v`` ambiguous); a value is up to 255
# printable characters. At most 64 labels an object.
LABEL_KEY_RE = r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?$"
MAX_LABELS = 64


def _printable(value: str) -> None:
    if not value.isprintable():
        raise ValidationError("must hold printable characters only")


def _label_count(labels: dict) -> None:
    if len(labels) > MAX_LABELS:
        raise ValidationError(f"at most {MAX_LABELS} labels")


def Labels(**kw):
    return fields.Dict(keys=fields.Str(validate=validate.Regexp(
                           LABEL_KEY_RE, error="a label key is 1-63 letters, digits, '-', '_', '.' or '/', "
                                               "starting and ending with a letter or digit")),
                       values=fields.Str(validate=[validate.Length(0, 255), _printable]),
                       validate=_label_count, **kw)


class StrictBool(fields.Boolean):
    """JSON true or false, nothing else (marshmallow also takes "yes", 1, "off")."""

    def _deserialize(self, value, attr, data, **kw):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Timestamp(fields.DateTime):
    """Epoch seconds in ZooKeeper, RFC 3339 UTC on the wire (documented as a
    date-time string); output only."""

    def _serialize(self, value, attr, obj, **kw):
        return iso(value)


class StrictSchema(Schema):
    """Input schemas reject unknown fields (contract: unknown fields -> 422)."""

    class Meta:
        unknown = RAISE


def require_positive_or_none(value):
    if value is not None and value < 1:
        raise ValidationError("must be at least 1")
