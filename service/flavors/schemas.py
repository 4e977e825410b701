from marshmallow import Schema, fields


class FlavorSchema(Schema):
    name = fields.Str(required=True)
    vcpus = fields.Int(required=True)
    memory_mib = fields.Int(required=True)
    disk_gib = fields.Int(required=True)
    etag = fields.Str(required=True)
