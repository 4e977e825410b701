"""A group's conditions: why it is (not) placed, (not) ready, (not) moving.

kubectl-style (type, status "True"/"False", reason, message, since), computed
on every read from the records the service reads anyway -- the group, its
instances, the leader's GroupStatus and the image -- so they always agree with
the counts beside them and need no writer of their own (the service stays
stateless). ``since`` is when the condition's current reason started holding,
as far as the records tell: a spec change (``updated_at``), the leader's
``GroupStatus.since``, an instance's ``state_since``/``ready_at``, a replica's
``created_at``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cowfleet.models import ConditionType, Group, GroupStatus, ImageStatus, Instance, InstanceState, Reason

TRUE, FALSE = "True", "False"
# how many distinct instance messages a condition quotes (the rest are counted)
QUOTED = 3


@dataclass
class ImageState:
    """What the group's conditions need of its image (None: the image is gone)."""
    status: str
    message: str
    replicas: int
    since: float | None       # the first replica's creation, else the image's


def condition(kind: str, ok: bool, reason: str, message: str, since: float | None) -> dict:
    return {"type": kind, "status": TRUE if ok else FALSE, "reason": reason, "message": message,
            "since": since}


def _earliest(values) -> float | None:
    values = [v for v in values if v is not None]
    return min(values) if values else None


def _latest(values) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _since(inst: Instance) -> float:
    return inst.state_since or inst.running_at or inst.created_at


def _quote(insts: list[Instance]) -> str:
    """The distinct messages of some instances, the most frequent first:
    'waiting for image 'x' to hold data (2 instances); ...'."""
    counts = Counter(i.message or i.state for i in insts)
    parts = [f"{m} ({n} instances)" if n > 1 else m for m, n in counts.most_common(QUOTED)]
    rest = len(counts) - QUOTED
    return "; ".join(parts) + (f"; and {rest} other reason(s)" if rest > 0 else "")


def _main_reason(insts: list[Instance], fallback: str) -> str:
    reasons = Counter(i.reason for i in insts if i.reason)
    return reasons.most_common(1)[0][0] if reasons else fallback


def image_condition(group: Group, image: ImageState | None) -> dict:
    if image is None:
        return condition(ConditionType.IMAGE_AVAILABLE, False, Reason.IMAGE_NOT_FOUND,
                         f"image '{group.image}' does not exist", group.updated_at or group.created_at)
    if image.replicas:
        reason = Reason.IMAGE_AVAILABLE if image.status == ImageStatus.AVAILABLE else image.status.capitalize()
        return condition(ConditionType.IMAGE_AVAILABLE, True, reason,
                         f"image '{group.image}' is {image.status}: {image.message}", image.since)
    reason = Reason.IMAGE_ERROR if image.status == ImageStatus.ERROR else Reason.IMAGE_PENDING
    return condition(ConditionType.IMAGE_AVAILABLE, False, reason,
                     f"image '{group.image}' is {image.status}: {image.message}", image.since)


def placed_condition(group: Group, live: list[Instance], placed: GroupStatus) -> dict:
    changed = group.updated_at or group.created_at
    if placed.observed_generation < group.generation:
        return condition(ConditionType.PLACED, False, Reason.NOT_OBSERVED,
                         f"generation {group.generation} is waiting for a compute leader to place it", changed)
    if placed.unplaced or placed.reason == Reason.FLAVOR_NOT_FOUND:
        reason = placed.reason if placed.reason and placed.reason != Reason.NODE_LEFT else Reason.NO_CAPACITY
        return condition(ConditionType.PLACED, False, reason, placed.message, placed.since or changed)
    current = [i for i in live if group.is_current(i)]
    return condition(ConditionType.PLACED, True, Reason.ALL_PLACED,
                     f"{len(current)} of {group.size} instance(s) placed",
                     _latest(i.created_at for i in current) or changed)


def conditions(group: Group, instances: list[Instance], placed: GroupStatus,
               image: ImageState | None) -> list[dict]:
    """The group's conditions, in ``ConditionType.ALL`` order."""
    live = [i for i in instances if i.state != InstanceState.TERMINATING]
    current = [i for i in live if group.is_current(i)]
    outdated = [i for i in live if not group.is_current(i)]
    ready = [i for i in current if i.state == InstanceState.READY]
    failed = [i for i in live if i.state == InstanceState.FAILED]
    pending = [i for i in live if i.state in (InstanceState.PENDING, InstanceState.STARTING)]
    booting = [i for i in live if i.state == InstanceState.RUNNING]
    changed = group.updated_at or group.created_at
    observed = placed.observed_generation >= group.generation

    img = image_condition(group, image)
    plc = placed_condition(group, live, placed)

    # Ready: every cause of not being ready, the weightiest first; its reason is the first's
    causes: list[tuple[str, str, float | None]] = []
    if group.deleting:
        causes.append((Reason.DELETING, "the group is being deleted", changed))
    if failed:
        causes.append((Reason.INSTANCES_FAILED, f"{len(failed)} instance(s) failed: {_quote(failed)}",
                       _earliest(_since(i) for i in failed)))
    if plc["status"] == FALSE:
        causes.append((plc["reason"], plc["message"], placed.since or changed))
    if pending:
        waiting_on_image = img["status"] == FALSE and any(i.reason == Reason.IMAGE_NO_DATA for i in pending)
        causes.append((img["reason"] if waiting_on_image else _main_reason(pending, Reason.INSTANCES_PENDING),
                       f"{len(pending)} instance(s) pending: "
                       + (img["message"] if waiting_on_image else _quote(pending)),
                       _earliest(_since(i) for i in pending)))
    if booting:
        # no "for N s" here: a message stays the same between reads (since says how long)
        causes.append((Reason.GUESTS_BOOTING,
                       f"{len(booting)} guest(s) booting, not ready yet (failed if not ready "
                       f"{group.ready_timeout} s after their start)", _earliest(i.running_at for i in booting)))
    if outdated:
        causes.append((Reason.ROLLING_UPDATE,
                       f"rolling update to image '{group.image}', flavor '{group.flavor}': "
                       f"{len(outdated)} outdated instance(s) left", changed))
    is_ready = (not causes and observed and len(ready) == group.size and len(live) == group.size)
    ready_since = _latest(i.ready_at for i in ready) or changed
    if is_ready:
        rdy = condition(ConditionType.READY, True, Reason.READY, f"{len(ready)}/{group.size} ready", ready_since)
    else:
        if not causes:        # e.g. scale-in: instances left to terminate, or a count not reached yet
            causes.append((Reason.SCALING, f"{len(live)} live instance(s) for size {group.size}", changed))
        reason = causes[0][0]
        rdy = condition(ConditionType.READY, False, reason,
                        f"{len(ready)}/{group.size} ready: " + "; ".join(c[1] for c in causes), causes[0][2])

    # Progressing: is anything moving the group toward its spec?
    if is_ready:
        prog = condition(ConditionType.PROGRESSING, False, Reason.COMPLETE,
                         f"generation {group.generation} complete", ready_since)
    elif group.deleting:
        prog = condition(ConditionType.PROGRESSING, True, Reason.DELETING,
                         f"{len(instances)} instance(s) left to remove", changed)
    else:
        blocked_pending = img["status"] == FALSE and img["reason"] in (Reason.IMAGE_ERROR, Reason.IMAGE_NOT_FOUND)
        # fewer live than size with none unplaced: the leader's next check adds them
        unplaced = plc["status"] == FALSE and plc["reason"] != Reason.NOT_OBSERVED
        moving = (not observed or booting or (pending and not blocked_pending) or outdated
                  or len(live) > group.size or (len(live) < group.size and not unplaced))
        if moving:
            reason = (Reason.ROLLING_UPDATE if outdated else Reason.NOT_OBSERVED if not observed else
                      Reason.SCALING if len(live) != group.size else
                      Reason.INSTANCES_PENDING if pending else Reason.GUESTS_BOOTING)
            prog = condition(ConditionType.PROGRESSING, True, reason, rdy["message"], changed)
        else:
            prog = condition(ConditionType.PROGRESSING, False, Reason.STALLED,
                             f"nothing can move until this changes: {rdy['message']}",
                             _latest(c[2] for c in causes))
    return [img, plc, rdy, prog]
