from marshmallow import Schema, fields, validate

from cowfleet.service.fields import StrictSchema


class FlavorSpecSchema(StrictSchema):
    vcpus = fields.Int(required=True, strict=True, validate=validate.Range(1, 256))
    memory_mib = fields.Int(required=True, strict=True, validate=validate.Range(64, 4 * 1024 * 1024))
    disk_gib = fields.Int(load_default=1, strict=True, validate=validate.Range(1, 65536))


class FlavorSchema(Schema):
    name = fields.Str(required=True)
    vcpus = fields.Int(required=True)
    memory_mib = fields.Int(required=True)
    disk_gib = fields.Int(required=True)
    etag = fields.Str(required=True)
