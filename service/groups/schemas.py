from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from cowfleet import defaults
from cowfleet.models import ConditionType, EventType, GroupPhase, InstanceState
from cowfleet.service.fields import Labels, Name, SshKeys, StrictBool, StrictSchema, Timestamp

MAX_GROUP_SIZE = 10_000


class PlacementSchema(StrictSchema):
    strategy = fields.Str(load_default=defaults.STRATEGY, validate=validate.OneOf(defaults.STRATEGIES))
    max_per_node = fields.Int(load_default=defaults.MAX_PER_NODE, allow_none=True, strict=True,
                              validate=validate.Range(1, MAX_GROUP_SIZE))


class UpdatePolicySchema(StrictSchema):
    max_unavailable = fields.Int(load_default=defaults.MAX_UNAVAILABLE, strict=True,
                                 validate=validate.Range(0, MAX_GROUP_SIZE))
    max_surge = fields.Int(load_default=defaults.MAX_SURGE, strict=True, validate=validate.Range(0, MAX_GROUP_SIZE))

    @validates_schema
    def _can_progress(self, data, **kw):
        if data.get("max_unavailable") == 0 and data.get("max_surge") == 0:
            raise ValidationError("max_unavailable and max_surge cannot both be 0: "
                                  "a rolling update could never replace an instance", "max_unavailable")


class GroupSpecSchema(StrictSchema):
    image = Name(required=True)
    flavor = Name(required=True)
    size = fields.Int(required=True, strict=True, validate=validate.Range(0, MAX_GROUP_SIZE))
    placement = fields.Nested(PlacementSchema, load_default=lambda: PlacementSchema().load({}))
    user_data = fields.Str(load_default=None, allow_none=True, validate=validate.Length(max=65536), metadata={
        "description": "handed to every instance verbatim as the NoCloud seed's user-data (a #cloud-config "
                       "document, a #! script, a MIME multipart); at most 65536 characters"})
    ssh_authorized_keys = SshKeys(load_default=list, metadata={
        "description": "OpenSSH public keys ('TYPE BASE64 [COMMENT]', at most 32): in the seed's meta-data "
                       "as public-keys, which cloud-init installs for the image's default user; with no "
                       "user_data, user-data is a #cloud-config holding them as ssh_authorized_keys"})
    labels = Labels(load_default=dict)
    update_policy = fields.Nested(UpdatePolicySchema, load_default=lambda: UpdatePolicySchema().load({}))
    persistent = StrictBool(load_default=False, metadata={
        "description": "keep each instance's overlay across restarts of its domain and of the agent "
                       "(the exception: instances are ephemeral by default, a restart starts from the "
                       "master again); an overlay is removed when its instance is deleted"})
    ready_timeout = fields.Int(load_default=defaults.READY_TIMEOUT, strict=True,
                               validate=validate.Range(defaults.READY_TIMEOUT_MIN, defaults.READY_TIMEOUT_MAX),
                               metadata={"description": (
                                   "seconds an instance has, from its domain's start, to print its readiness "
                                   "line; after that it is failed with reason ReadyTimeout and its domain "
                                   f"stopped (default {defaults.READY_TIMEOUT}, from "
                                   f"{defaults.READY_TIMEOUT_MIN} to {defaults.READY_TIMEOUT_MAX})")})


class InstanceSchema(Schema):
    id = fields.Str(required=True)
    node = fields.Str(required=True, allow_none=True)
    rack = fields.Str(required=True, allow_none=True)
    state = fields.Str(required=True, validate=validate.OneOf(InstanceState.ALL))
    address = fields.Str(required=True, allow_none=True, metadata={
        "description": "the instance's address on its node's instance subnet (routed across racks); "
                       "set when the node's agent takes the instance, before its domain starts"})
    mac = fields.Str(required=True, allow_none=True, metadata={"description": "the NIC's MAC (stable per id)"})
    image = fields.Str(required=True)
    message = fields.Str(required=True)
    created_at = Timestamp(required=True)
    running_at = Timestamp(required=True, allow_none=True)
    ready_at = Timestamp(required=True, allow_none=True)
    reason = fields.Str(required=True, metadata={
        "description": "why the instance is pending or failed, machine-readable (e.g. ImageNotAvailable, "
                       "NoReplicaReachable, ReadyTimeout, DomainStartFailed); empty otherwise"})
    state_since = Timestamp(required=True, allow_none=True, metadata={
        "description": "when the state (or a pending instance's reason) last changed"})


class ConditionSchema(Schema):
    type = fields.Str(required=True, validate=validate.OneOf(ConditionType.ALL), metadata={
        "description": "ImageAvailable: the image holds data on a storage node; Placed: every wanted instance "
                       "has a node; Ready: ready == size on the current spec; Progressing: the group is moving "
                       "toward its spec (False with Complete when done, Stalled when nothing can move)"})
    status = fields.Str(required=True, validate=validate.OneOf(("True", "False")))
    reason = fields.Str(required=True, metadata={"description": "machine-readable, CamelCase"})
    message = fields.Str(required=True, metadata={"description": "for people"})
    since = Timestamp(required=True, allow_none=True, metadata={
        "description": "when the condition's current reason started holding, as far as the records tell"})


class GroupStatusSchema(Schema):
    phase = fields.Str(required=True, validate=validate.OneOf(GroupPhase.ALL))
    ready = fields.Int(required=True)
    running = fields.Int(required=True)
    pending = fields.Int(required=True)
    failed = fields.Int(required=True)
    observed_generation = fields.Int(required=True)
    message = fields.Str(required=True)
    conditions = fields.List(fields.Nested(ConditionSchema), required=True, metadata={
        "description": "kubectl-style: why the group is (not) placed, ready, progressing (one of each type)"})


class GroupSchema(Schema):
    name = fields.Str(required=True)
    image = fields.Str(required=True)
    flavor = fields.Str(required=True)
    size = fields.Int(required=True)
    placement = fields.Dict(required=True)
    user_data = fields.Str(required=True, allow_none=True)
    ssh_authorized_keys = fields.List(fields.Str(), required=True)
    labels = fields.Dict(required=True)
    update_policy = fields.Dict(required=True)
    persistent = fields.Bool(required=True)
    ready_timeout = fields.Int(required=True)
    generation = fields.Int(required=True)
    created_at = Timestamp(required=True)
    updated_at = Timestamp(required=True, allow_none=True, metadata={
        "description": "when the spec last changed (null: not since its creation)"})
    status = fields.Nested(GroupStatusSchema, required=True)
    instances = fields.List(fields.Nested(InstanceSchema), required=True)
    etag = fields.Str(required=True)


class EventSchema(Schema):
    id = fields.Str(required=True, metadata={"description": "its sequence number: the cursor (?after=)"})
    time = Timestamp(required=True)
    type = fields.Str(required=True, validate=validate.OneOf(EventType.ALL))
    reason = fields.Str(required=True, metadata={
        "description": "Created, Updated, Scaled, Deleting (the service); Placed, Unplaced, Moved, Replaced, "
                       "ScaledIn, Terminating (the leader); Waiting, Started, Ready, Failed (the compute agent)"})
    message = fields.Str(required=True)
    instance = fields.Str(required=True, allow_none=True)
    node = fields.Str(required=True, allow_none=True)
    generation = fields.Int(required=True, allow_none=True)
    source = fields.Str(required=True, metadata={"description": "service, or the node of the leader or agent"})


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
