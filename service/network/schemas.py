from marshmallow import Schema, fields, validate

from cowfleet import network
from cowfleet.specs import StrictSchema


class NetworkSpecSchema(StrictSchema):
    instance_cidr = fields.Str(required=True, validate=validate.Length(1, 43), metadata={
        "description": "the cluster's instance network (IPv4 CIDR), e.g. 10.78.0.0/16; must not overlap "
                       "the nodes' own addresses; a real network routes it to the compute nodes"})
    subnet_prefix = fields.Int(load_default=network.DEFAULT_SUBNET_PREFIX, strict=True,
                               validate=validate.Range(1, network.MAX_SUBNET_PREFIX), metadata={
        "description": "the length of the subnet each compute node claims (24: 253 instances a node)"})


class SubnetClaimSchema(Schema):
    node = fields.Str(required=True)
    subnet = fields.Str(required=True)
    gateway = fields.Str(required=True)
    member = fields.Bool(required=True, metadata={"description": "the node's agent is in the cluster now"})


class NetworkSchema(Schema):
    instance_cidr = fields.Str(required=True, allow_none=True)
    subnet_prefix = fields.Int(required=True, allow_none=True)
    subnets = fields.List(fields.Nested(SubnetClaimSchema), required=True, metadata={
        "description": "each compute node's claim: kept across agent restarts, released by "
                       "DELETE /v1/nodes/{name} once the node is gone"})
    etag = fields.Str(required=True)
