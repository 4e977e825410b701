from __future__ import annotations

from urllib.parse import urlparse

from marshmallow import Schema, ValidationError, fields, validate

from cowfleet import defaults
from cowfleet.models import ImageStatus
from cowfleet.service.fields import Labels, StrictSchema, Timestamp

SOURCE_SCHEMES = ("file", "http", "https")


def _valid_source(url: str) -> None:
    if not url.isprintable():
        raise ValidationError("must hold printable characters only")
    try:
        parsed = urlparse(url)
        parsed.port                    # raises on a port that is not a number
    except ValueError as exc:          # e.g. "Invalid IPv6 URL"
        raise ValidationError(f"not a valid URL: {exc}") from None
    if parsed.scheme not in SOURCE_SCHEMES:
        raise ValidationError(f"scheme must be one of {', '.join(SOURCE_SCHEMES)}")
    if parsed.scheme == "file" and (parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/")):
        raise ValidationError("a file URL names an absolute path on the storage node: file:///path")
    if parsed.scheme != "file" and not parsed.netloc:
        raise ValidationError("an http(s) URL needs a host")


class ImageSpecSchema(StrictSchema):
    source_url = fields.Str(allow_none=True, load_default=None,
                            validate=[validate.Length(max=2048), _valid_source])
    format = fields.Str(load_default="raw", validate=validate.OneOf(["raw", "qcow2"]))
    min_replicas = fields.Int(load_default=defaults.MIN_REPLICAS, strict=True, validate=validate.Range(1, 16))
    labels = Labels(load_default=dict)


class ReplicaSchema(Schema):
    node = fields.Str(required=True)
    rack = fields.Str(required=True)


class ImageSchema(Schema):
    name = fields.Str(required=True)
    format = fields.Str(required=True)
    source_url = fields.Str(required=True, allow_none=True)
    size_bytes = fields.Int(required=True, allow_none=True)
    sha256 = fields.Str(required=True, allow_none=True)
    min_replicas = fields.Int(required=True)
    labels = fields.Dict(required=True)
    status = fields.Str(required=True, validate=validate.OneOf(ImageStatus.ALL))
    message = fields.Str(required=True)
    replicas = fields.List(fields.Nested(ReplicaSchema), required=True)
    created_at = Timestamp(required=True)
    etag = fields.Str(required=True)
