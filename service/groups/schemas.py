from __future__ import annotations

from marshmallow import Schema, fields, validate

from cowfleet.service.fields import Labels, Name, StrictSchema, Timestamp

MAX_GROUP_SIZE = 10_000


class PlacementSchema(StrictSchema):
    strategy = fields.Str(load_default="spread", validate=validate.OneOf(["spread", "pack"]))
    max_per_node = fields.Int(load_default=None, allow_none=True, strict=True,
                              validate=validate.Range(1, MAX_GROUP_SIZE))


class UpdatePolicySchema(StrictSchema):
    max_unavailable = fields.Int(load_default=1, strict=True, validate=validate.Range(0, MAX_GROUP_SIZE))
    max_surge = fields.Int(load_default=1, strict=True, validate=validate.Range(0, MAX_GROUP_SIZE))


class GroupSpecSchema(StrictSchema):
    image = Name(required=True)
    flavor = Name(required=True)
    size = fields.Int(required=True, strict=True, validate=validate.Range(0, MAX_GROUP_SIZE))
    placement = fields.Nested(PlacementSchema, load_default=lambda: PlacementSchema().load({}))
    user_data = fields.Str(load_default=None, allow_none=True, validate=validate.Length(max=65536))
    labels = Labels(load_default=dict)
    update_policy = fields.Nested(UpdatePolicySchema, load_default=lambda: UpdatePolicySchema().load({}))
    persistent = fields.Bool(load_default=False, metadata={
        "description": "keep each instance's overlay across restarts of its domain and of the agent "
                       "(the exception: instances are ephemeral by default, a restart starts from the "
                       "master again); an overlay is removed when its instance is deleted"})


class InstanceSchema(Schema):
    id = fields.Str()
    node = fields.Str(allow_none=True)
    rack = fields.Str(allow_none=True)
    state = fields.Str()
    address = fields.Str(allow_none=True)
    image = fields.Str()
    message = fields.Str()
    created_at = Timestamp()
    running_at = Timestamp()
    ready_at = Timestamp()


class GroupStatusSchema(Schema):
    phase = fields.Str()
    ready = fields.Int()
    running = fields.Int()
    pending = fields.Int()
    failed = fields.Int()
    observed_generation = fields.Int()
    message = fields.Str()


class GroupSchema(Schema):
    name = fields.Str()
    image = fields.Str()
    flavor = fields.Str()
    size = fields.Int()
    placement = fields.Dict()
    user_data = fields.Str(allow_none=True)
    labels = fields.Dict()
    update_policy = fields.Dict()
    persistent = fields.Bool()
    generation = fields.Int()
    created_at = Timestamp()
    status = fields.Nested(GroupStatusSchema)
    instances = fields.List(fields.Nested(InstanceSchema))
    etag = fields.Str()


class RackOffersSchema(Schema):
    leader = fields.Str(allow_none=True)
    ms = fields.Float()
    offers = fields.Dict(keys=fields.Str(), values=fields.Int())
    errors = fields.Dict(keys=fields.Str(), values=fields.Str())
    error = fields.Str()


class PlacementTraceSchema(Schema):
    """The last placement hand-shake of a group: who coordinated, what each
    rack offered, the split, and how long each phase took."""
    request = fields.Str()
    group = fields.Str()
    coordinator = fields.Str()
    want = fields.Int()
    via = fields.Str(metadata={"description": "hand-off (from the service), queue (claimed by a leader "
                                              "after the grace period) or sweep (periodic re-check)"})
    started_at = Timestamp()
    racks = fields.Dict(keys=fields.Str(), values=fields.Nested(RackOffersSchema))
    split = fields.Dict(keys=fields.Str(), values=fields.Int())
    per_rack = fields.Dict(keys=fields.Str(), values=fields.Int())
    unplaced = fields.Int()
    attempts = fields.Int()
    offers_ms = fields.Float()
    commit_ms = fields.Float()
    total_ms = fields.Float()
    outcome = fields.Str()
