from __future__ import annotations

from urllib.parse import urlparse

from marshmallow import Schema, ValidationError, fields, validate

from cowfleet.service.fields import Labels, StrictSchema, Timestamp

SOURCE_SCHEMES = ("file", "http", "https")


def _valid_source(url: str) -> None:
    parsed = urlparse(url)
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
    min_replicas = fields.Int(load_default=2, strict=True, validate=validate.Range(1, 16))
    labels = Labels(load_default=dict)


class ReplicaSchema(Schema):
    node = fields.Str()
    rack = fields.Str()


class ImageSchema(Schema):
    name = fields.Str()
    format = fields.Str()
    source_url = fields.Str(allow_none=True)
    size_bytes = fields.Int(allow_none=True)
    sha256 = fields.Str(allow_none=True)
    min_replicas = fields.Int()
    labels = fields.Dict()
    status = fields.Str()
    message = fields.Str()
    replicas = fields.List(fields.Nested(ReplicaSchema))
    created_at = Timestamp()
    etag = fields.Str()
