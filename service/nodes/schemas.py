from marshmallow import Schema, fields

from cowfleet.service.fields import Timestamp


class NodeSchema(Schema):
    name = fields.Str()
    role = fields.Str()
    rack = fields.Str()
    leader = fields.Bool()
    address = fields.Str(allow_none=True)
    capacity = fields.Dict()
    allocated = fields.Dict()
    healthy = fields.Bool()
    last_seen = Timestamp()
    virt_type = fields.Str(allow_none=True)
