from __future__ import annotations

from marshmallow import Schema, fields, validate

from cowfleet.models import ConditionType, EventType, GroupPhase, InstanceState
from cowfleet.service.fields import Timestamp



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
    start = fields.Str(required=True, allow_none=True, validate=validate.OneOf(["clone", "boot"]), metadata={
        "description": "how its domain last started: clone (restored from a warm-clone template) or boot; "
                       "null until its node starts it"})
    start_reason = fields.Str(required=True, metadata={
        "description": "why an instance of a group with start clone or auto booted (e.g. the template "
                       "could not be made or restored); empty otherwise"})


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
    start = fields.Str(required=True, validate=validate.OneOf(["auto", "clone", "boot"]))
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


class PlacementChunkSchema(Schema):
    ops = fields.Int()
    bytes = fields.Int()
    instances = fields.Int(metadata={"description": "new instances it created"})
    ms = fields.Float()


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
    stale_nodes = fields.List(fields.Str(), metadata={
        "description": "nodes whose assignment folder changed under the last failed attempt's commit: the next "
                       "offer round asks them to read their assignments anew"})
    read_ms = fields.Float()
    offers_ms = fields.Float(metadata={"description": "the offer round, leaders_ms included"})
    leaders_ms = fields.Float(metadata={"description": "finding the rack leaders to ask (0 when the "
                                                       "coordinator kept them from an earlier round)"})
    plan_ms = fields.Float()
    commit_ms = fields.Float()
    total_ms = fields.Float()
    outcome = fields.Str()
    chunks = fields.List(fields.Nested(PlacementChunkSchema), metadata={
        "description": "the commit's ZooKeeper transactions, in order (a large group is committed in several, "
                       "each well under ZooKeeper's request size limit)"})
