from __future__ import annotations

from marshmallow import Schema, fields, validate

from cowfleet.models import ImageStatus
from cowfleet.service.fields import Timestamp



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
