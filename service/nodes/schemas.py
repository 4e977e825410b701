from marshmallow import Schema, fields, validate

from cowfleet.service.fields import Timestamp


class NodeSchema(Schema):
    name = fields.Str(required=True)
    role = fields.Str(required=True, validate=validate.OneOf(["compute", "storage"]))
    rack = fields.Str(required=True)
    leader = fields.Bool(required=True)
    address = fields.Str(required=True, allow_none=True)
    capacity = fields.Dict(required=True)
    allocated = fields.Dict(required=True)
    healthy = fields.Bool(required=True)
    last_seen = Timestamp(required=True)
    virt_type = fields.Str(required=True, allow_none=True)
    subnet = fields.Str(required=True, allow_none=True, metadata={
        "description": "compute: the instance subnet the node claimed (its instances' addresses)"})
    node_ip = fields.Str(required=True, allow_none=True, metadata={
        "description": "compute: the node's address, the next hop of its instance subnet"})
    warm_spares = fields.Int(required=True, allow_none=True, metadata={
        "description": "compute: warm-clone spares restored ahead and waiting to be claimed by starts"})
