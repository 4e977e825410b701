from flask import request

from cowfleet.service.api import endpoint, if_match, json_body, zk
from cowfleet.service.groups import service
from cowfleet.service.openapi import ecma
from cowfleet.service.groups.schemas import EventSchema, GroupSchema, PlacementTraceSchema
from cowfleet.specs import GroupSpecSchema
from cowfleet.service.resource import crud_blueprint

# DELETE answers 202: the group stays (phase deleting) until its instances are gone
bp = crud_blueprint("groups", "/v1/instance-groups", service, GroupSpecSchema, GroupSchema,
                    kind="instance group", delete_status=202)


@bp.patch("/<name>")
@endpoint(body=GroupSpecSchema, out=GroupSchema, patch=True)
def patch(name):
    """JSON merge patch of the spec, e.g. {"size": 80}."""
    return service.patch(zk(), name, json_body(), if_match())


@bp.get("/<name>/placement")
@endpoint(out=PlacementTraceSchema)
def placement(name):
    """The group's last placement hand-shake: coordinator, offers per rack, split, timings."""
    return service.placement(zk(), name)


@bp.get("/<name>/events")
@endpoint(out=EventSchema, many=True, query=(
    {"name": "limit", "in": "query", "required": False,
     "description": f"how many (default {service.EVENTS_DEFAULT}, at most {service.events.CAP}: "
                    f"the most a group keeps)",
     "schema": {"type": "integer", "minimum": 1, "maximum": service.events.CAP}},
    {"name": "after", "in": "query", "required": False,
     "description": "an event id: the events after it, oldest first (without: the newest ones); "
                    "a Link rel=next header when more follow",
     "schema": {"type": "string", "pattern": ecma(service.EVENT_ID.pattern)}}))
def events(name):
    """The group's recent events (the newest 200 are kept), oldest first."""
    return service.events_of(zk(), name, request.args)


@bp.get("/<name>/instances/<iid>/console")
@endpoint(raw_out="text/plain", errors=(502,), query=({
    "name": "tail_bytes", "in": "query", "required": False,
    "description": f"how much of the end of the console to return (default {service.CONSOLE_DEFAULT}, "
                   f"at most {service.CONSOLE_TAIL_MAX}: larger values are capped)",
    "schema": {"type": "integer", "minimum": 0}},))
def console(name, iid):
    """The tail of an instance's serial console (text/plain; X-Console-Size: its whole size)."""
    return service.console(zk(), name, iid, request.args.get("tail_bytes"))
