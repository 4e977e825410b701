"""Instance groups: the service writes the desired state and a request znode,
answers at once, and the agents' leader places the instances (ARCHITECTURE §3)."""
from __future__ import annotations

import json
import logging
import re

import requests
from urllib.parse import urlencode

from flask import Response, request
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from marshmallow import ValidationError

from cowfleet import p2p
from cowfleet.models import (CONSOLE_TAIL_MAX, ConditionType, DeployRequest, Event, EventReason, Flavor, Group,
                             GroupPhase, GroupStatus, ImageStatus, Instance, InstanceState, NodeInfo, Reason, now,
                             valid_instance_id)
from cowfleet.service.api import Result, fetch
from cowfleet.service.groups.conditions import ImageState, conditions
from cowfleet.service.groups.handoff import hand_off
from cowfleet.service.images import service as images
from cowfleet.specs import GroupSpecSchema
from cowfleet.service.paging import ListQuery, page
from cowfleet.service.preconditions import ANY, Precondition, precondition_failed
from cowfleet.protocol import P2P, ProblemType
from cowfleet.service.problems import Problem, conflict, invalid, malformed, node_failed, unavailable
from cowfleet.zk import events, layout
from cowfleet.zk.connection import commit, read, read_children, read_later
from cowfleet.zk.groups import finish_delete_if_empty, guard_version, touch_guards

log = logging.getLogger(__name__)


def status_of(group: Group, instances: list[Instance], placed: GroupStatus, image: ImageState | None) -> dict:
    """The group's status: counts, phase, message and conditions (conditions.py)."""
    conds = conditions(group, instances, placed, image)
    by_type = {c["type"]: c for c in conds}
    live = [i for i in instances if i.state != InstanceState.TERMINATING]
    # ready counts instances that are ready AND run the current image and flavor,
    # so `ready == size` means a rolling update has finished too
    ready = sum(i.state == InstanceState.READY and group.is_current(i) for i in live)
    running = sum(i.state in (InstanceState.RUNNING, InstanceState.READY) for i in live)
    pending = sum(i.state in (InstanceState.PENDING, InstanceState.STARTING) for i in live)
    failed = sum(i.state == InstanceState.FAILED for i in live)
    converged = placed.observed_generation >= group.generation
    image_broken = by_type[ConditionType.IMAGE_AVAILABLE]["reason"] in (Reason.IMAGE_ERROR, Reason.IMAGE_NOT_FOUND)
    ready_ok = by_type[ConditionType.READY]["status"] == "True"
    if group.deleting:
        phase = GroupPhase.DELETING
    elif failed or (image_broken and not ready_ok):
        # an image in error (or gone) starts nothing: degraded at once, not provisioning for ever
        phase = GroupPhase.DEGRADED
    elif converged and ready == group.size and len(live) == group.size:
        phase = GroupPhase.READY
    elif not live and group.size:
        phase = GroupPhase.PENDING
    else:
        phase = GroupPhase.PROVISIONING
    # the leader's placement message, else the Ready condition's (why not ready, or "N/N ready")
    message = placed.message or by_type[ConditionType.READY]["message"]
    return {"phase": phase, "ready": ready, "running": running, "pending": pending + placed.unplaced,
            "failed": failed, "observed_generation": placed.observed_generation, "message": message,
            "conditions": conds}


def image_state(zk, name: str) -> ImageState | None:
    got = images.state(zk, name)
    if got is None:
        return None
    image, replicas, status, message = got
    since = min((r.created_at for r in replicas), default=None) or image.created_at
    return ImageState(status=status, message=message, replicas=len(replicas), since=since)


def view(zk, group: Group, version: int, images_seen: dict | None = None) -> dict:
    """The group as the API shows it; ``images_seen`` memoises image states
    over one list (many groups, few images)."""
    placed = read_later(zk, layout.group_status(group.name), GroupStatus)   # with the instances' reads
    instances = [i for i, _ in read_children(zk, layout.group_instances(group.name), Instance)]
    placed = placed()
    seen = {} if images_seen is None else images_seen
    if group.image not in seen:
        seen[group.image] = image_state(zk, group.image)
    image = seen[group.image]
    out = group.to_dict()
    out.pop("deleting")
    out["status"] = status_of(group, instances, placed[0] if placed else GroupStatus(), image)
    out["instances"] = [i.to_dict() for i in sorted(instances, key=lambda i: i.id)]
    out["etag"] = str(version)
    return out


def get(zk, name: str) -> dict:
    return view(zk, *fetch(zk, layout.group(name), Group, "instance group", name))


def list_(zk, q: ListQuery) -> Result:
    seen: dict = {}
    return page(zk, layout.GROUPS, layout.group, Group, lambda zk_, g, v: view(zk_, g, v, seen), q)


def _check_references(zk, spec: dict, image_changes: bool = True) -> None:
    """422 naming the field when the image or flavor does not exist; and,
    when the group takes this image now (created, or its image changed), when
    the image is in error: nothing could start from it (a group already on it
    may still be scaled or deleted)."""
    errors = {}
    image = images.state(zk, spec["image"]) if image_changes else None
    exists = image is not None if image_changes else zk.exists(layout.image(spec["image"]))
    if not exists:
        errors["image"] = [f"unknown image '{spec['image']}'"]
    elif image is not None and image[2] == ImageStatus.ERROR:
        errors["image"] = [f"image '{spec['image']}' is in error ({image[3]}): no instance could start "
                           "from it; upload its data again or re-create it"]
    if read(zk, layout.flavor(spec["flavor"]), Flavor) is None:
        errors["flavor"] = [f"unknown flavor '{spec['flavor']}'"]
    if errors:
        # the detail is what the fields say, short (a client that shows one line shows this)
        raise invalid(errors, next(iter(errors.values()))[0] if len(errors) == 1
                      else "the group refers to objects that do not exist or cannot be used")


def _request(tx, name: str, generation: int) -> None:
    tx.create(layout.REQUEST_PREFIX, DeployRequest(group=name, generation=generation).to_bytes(),
              sequence=True)


def _commit(tx) -> str | None:
    """Commit; returns the path of the request znode it created (the last op)."""
    results = commit(tx)
    return results[-1] if results and isinstance(results[-1], str) else None


def _referenced(spec: dict) -> tuple[str, str]:
    return layout.image(spec["image"]), layout.flavor(spec["flavor"])


def _reference_gone(zk, spec: dict) -> None:
    """A group transaction failed on a guard: 422 if what it names is gone
    (deleted since the check), else the guard predates guards: make it."""
    _check_references(zk, spec, image_changes=False)
    for path in _referenced(spec):
        guard_version(zk, path)


def put(zk, name: str, spec: dict, pre: Precondition = ANY) -> tuple[dict, bool]:
    path = layout.group(name)
    current = read(zk, path, Group)
    _check_references(zk, spec, image_changes=current is None or current[0].image != spec["image"])
    label = f"instance group '{name}'"
    for _ in range(10):
        got = read(zk, path, Group)
        if got is None:
            pre.check_missing(label)
            group = Group(name=name, generation=1, **spec)
            tx = zk.transaction()
            tx.create(path, group.to_bytes())
            tx.create(layout.group_instances(name), b"")
            tx.create(layout.group_status(name), GroupStatus().to_bytes())
            touch_guards(tx, *_referenced(spec))
            _request(tx, name, group.generation)
            try:
                req = _commit(tx)
            except NodeExistsError:
                continue
            except NoNodeError:
                _reference_gone(zk, spec)
                continue
            # the event before the hand-off: the leader's (Placed) come after it
            _event(zk, name, EventReason.CREATED,
                   f"created: {group.size} x {group.flavor} of image {group.image}", group.generation)
            hand_off(zk, req)
            return get(zk, name), True
        group, version = got
        pre.check(version, label)
        if group.deleting:
            raise conflict(ProblemType.GROUP_BEING_DELETED, f"instance group '{name}' is being deleted")
        if group.spec() == spec:
            return view(zk, group, version), False
        before = group.spec()
        for k, v in spec.items():
            setattr(group, k, v)
        group.generation += 1
        group.updated_at = now()
        tx = zk.transaction()
        tx.set_data(path, group.to_bytes(), version=version)
        touch_guards(tx, *_referenced(spec))
        _request(tx, name, group.generation)
        try:
            req = _commit(tx)
        except BadVersionError:
            if pre.pinned:
                raise precondition_failed(f"{label} changed meanwhile")
            continue
        except NoNodeError:
            _reference_gone(zk, spec)
            continue
        _event(zk, name, *spec_change(before, spec), group.generation)
        hand_off(zk, req)
        return get(zk, name), False
    raise unavailable("too many concurrent writers; retry")


def delete(zk, name: str, pre: Precondition = ANY) -> None:
    path = layout.group(name)
    for _ in range(10):
        group, version = fetch(zk, path, Group, "instance group", name)
        pre.check(version, f"instance group '{name}'")
        if group.deleting:
            return
        group.deleting = True
        tx = zk.transaction()
        tx.set_data(path, group.to_bytes(), version=version)
        _request(tx, name, group.generation)
        try:
            req = _commit(tx)
        except BadVersionError:
            if pre.pinned:
                raise precondition_failed(f"instance group '{name}' changed meanwhile")
            continue
        _event(zk, name, EventReason.DELETING, "deletion asked: its instances are being removed", group.generation)
        hand_off(zk, req)
        finish_delete_if_empty(zk, name)
        return
    raise unavailable("too many concurrent writers; retry")


# the fields whose values an Updated event quotes (the others are named only)
QUOTED_FIELDS = ("image", "flavor", "size", "persistent", "ready_timeout", "start")


def spec_change(before: dict, after: dict) -> tuple[str, str]:
    """(reason, message) of the event for a spec change: Scaled when only
    the size changed, else Updated naming what changed."""
    changed = [k for k in Group.SPEC_FIELDS if before.get(k) != after.get(k)]
    if changed == ["size"]:
        return EventReason.SCALED, f"scaled from {before['size']} to {after['size']}"
    parts = [f"{k} {before.get(k)} -> {after.get(k)}" if k in QUOTED_FIELDS else k for k in changed]
    return EventReason.UPDATED, "spec changed: " + ", ".join(parts)


def _event(zk, name: str, reason: str, message: str, generation: int) -> None:
    events.record_safely(zk, name, Event(reason=reason, message=message, generation=generation, source="service"),
                         log)


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def patch(zk, name: str, changes: dict, pre: Precondition = ANY) -> dict:
    """Apply a merge patch to the spec; without If-Match, concurrent writers
    are handled by re-reading and re-applying (never a lost update)."""
    for _ in range(10):
        group, version = fetch(zk, layout.group(name), Group, "instance group", name)
        pre.check(version, f"instance group '{name}'")
        try:
            spec = GroupSpecSchema().load(merge_patch(group.spec(), changes))
        except ValidationError as exc:
            raise invalid(exc.messages)
        except RecursionError:
            raise malformed("the patch is nested too deeply")
        try:
            return put(zk, name, spec, Precondition.at(version))[0]
        except Problem as exc:
            if exc.status == 412 and not pre.pinned:
                continue
            raise
    raise unavailable("too many concurrent writers; retry")


def placement(zk, name: str) -> dict:
    fetch(zk, layout.group(name), Group, "instance group", name)
    try:
        data, _ = zk.get(layout.group_placement(name))
    except NoNodeError:
        raise Problem(404, "Not Found", f"instance group '{name}' has not been placed yet",
                      type=ProblemType.NOT_PLACED_YET)
    return json.loads(data.decode())


EVENTS_DEFAULT = 100
# an event id as the events list them (the cursor ``after``); the OpenAPI
# document shows this same pattern (views.py)
EVENT_ID = re.compile(r"^[0-9]{1,10}\Z")


def events_of(zk, name: str, args) -> Result:
    """The group's recent events, oldest first: the newest ``limit``, or with
    ``after`` (an event id, the cursor) the first ``limit`` after it; a
    ``Link: rel="next"`` when more follow."""
    raw = args.get("limit", str(EVENTS_DEFAULT))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= events.CAP:
        raise invalid({"limit": [f"must be an integer from 1 to {events.CAP}"]}, "invalid query parameter")
    after = args.get("after") or None
    if after is not None and not EVENT_ID.match(after):
        raise invalid({"after": ["must be an event id (its digits, as the events list them)"]},
                      "invalid query parameter")
    fetch(zk, layout.group(name), Group, "instance group", name)
    limit = int(raw)
    items, more = events.read(zk, name, after.zfill(10) if after else None, limit)
    headers = {}
    if more:
        headers["Link"] = f'<{request.path}?{urlencode([("limit", limit), ("after", items[-1]["id"])])}>; rel="next"'
    return Result(items, headers=headers)


CONSOLE_DEFAULT = 65536


def console(zk, name: str, iid: str, tail_bytes: str | None):
    """The tail of the instance's serial console, read from its compute node
    over P2P (consoles live on the node's disk, never in ZooKeeper)."""
    try:
        tail = CONSOLE_DEFAULT if tail_bytes in (None, "") else int(tail_bytes)
        if tail < 0:
            raise ValueError
    except ValueError:
        raise invalid({"tail_bytes": ["must be a whole number of bytes, 0 or more"]},
                      "invalid query parameter") from None
    tail = min(tail, CONSOLE_TAIL_MAX)
    fetch(zk, layout.group(name), Group, "instance group", name)
    got = read(zk, layout.group_instance(name, iid), Instance) if valid_instance_id(iid) else None
    if got is None:
        raise Problem(404, "Not Found", f"instance '{iid}' of group '{name}' does not exist",
                      type=ProblemType.NOT_FOUND)
    inst = got[0]
    member = read(zk, layout.node(inst.node), NodeInfo) if inst.node else None
    if member is None or not member[0].address:
        raise node_failed(f"node '{inst.node}' of instance '{iid}' is not in the cluster now")
    try:
        resp = p2p.session().post(member[0].address + P2P.CONSOLE, json={"id": iid, "tail_bytes": tail}, timeout=5)
    except requests.RequestException as exc:
        raise node_failed(f"node '{inst.node}' did not answer: {type(exc).__name__}") from None
    if resp.status_code == 404:          # not started yet: nothing printed
        text, size = "", 0
    elif resp.ok:
        answer = resp.json()
        text, size = answer["text"], answer["size"]
    else:
        raise node_failed(f"node '{inst.node}' answered {resp.status_code}")
    out = Response(text, mimetype="text/plain")
    out.headers["X-Console-Size"] = str(size)
    return out

