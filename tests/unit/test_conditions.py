"""A group's conditions and phase, from the records (service/groups/conditions.py)."""
from __future__ import annotations

import pytest

from cowfleet.agents.placement import unplaced_reason
from cowfleet.models import Group, GroupStatus, Instance, Reason
from cowfleet.service.groups.conditions import ImageState
from cowfleet.service.groups.service import status_of

T0 = 1_800_000_000.0
AVAILABLE = ImageState(status="available", message="1 of 1 replicas", replicas=1, since=T0 - 100)


def grp(size=2, **kw) -> Group:
    return Group(name="g", image="img", flavor="small", size=size, created_at=T0, **kw)


def inst(n: int, state: str, image="img", **kw) -> Instance:
    return Instance(id=f"g-{n:06x}", group="g", node="n1", rack="r1", image=image, flavor="small", generation=1,
                    state=state, created_at=T0 + n, **kw)


def status(group, instances, placed=None, image=AVAILABLE):
    s = status_of(group, instances, placed or GroupStatus(observed_generation=group.generation), image)
    s["by_type"] = {c["type"]: c for c in s["conditions"]}
    return s


def cond(s, kind):
    c = s["by_type"][kind]
    return c["status"], c["reason"]


def test_ready_group_says_so_everywhere():
    s = status(grp(), [inst(1, "ready", ready_at=T0 + 20), inst(2, "ready", ready_at=T0 + 30)])
    assert s["phase"] == "ready" and s["message"] == "2/2 ready"
    assert [c["type"] for c in s["conditions"]] == ["ImageAvailable", "Placed", "Ready", "Progressing"]
    assert cond(s, "ImageAvailable") == ("True", "ImageAvailable")
    assert cond(s, "Placed") == ("True", "AllPlaced")
    assert cond(s, "Ready") == ("True", "AllReady")
    assert s["by_type"]["Ready"]["since"] == T0 + 30          # the last one to become ready
    assert cond(s, "Progressing") == ("False", "Complete")


def test_image_in_error_degrades_the_group_at_once_and_says_why():
    broken = ImageState(status="error", message="fetching file:///x failed: no such file", replicas=0, since=T0)
    s = status(grp(), [inst(1, "pending", reason=Reason.IMAGE_NO_DATA, message="waiting for image 'img' to hold data"),
                       inst(2, "pending", reason=Reason.IMAGE_NO_DATA, message="waiting for image 'img' to hold data")],
               image=broken)
    assert s["phase"] == "degraded"
    assert cond(s, "ImageAvailable") == ("False", "ImageError")
    assert cond(s, "Ready") == ("False", "ImageError")
    assert "no such file" in s["by_type"]["Ready"]["message"] and "no such file" in s["message"]
    assert cond(s, "Progressing") == ("False", "Stalled")


def test_pending_image_is_progressing_not_degraded():
    pending = ImageState(status="pending", message="no storage node holds a copy yet", replicas=0, since=T0)
    s = status(grp(1), [inst(1, "pending", reason=Reason.IMAGE_NO_DATA)], image=pending)
    assert s["phase"] == "provisioning"
    assert cond(s, "ImageAvailable") == ("False", "ImagePending")
    assert cond(s, "Ready") == ("False", "ImagePending")
    assert cond(s, "Progressing") == ("True", "InstancesPending")


def test_unplaced_instances_name_the_leaders_reason():
    placed = GroupStatus(observed_generation=1, unplaced=1, reason=Reason.MAX_PER_NODE, since=T0 + 5,
                         message="1 instance(s) not placed: ... within max_per_node=1; placed when capacity appears")
    s = status(grp(2), [inst(1, "ready", ready_at=T0 + 9)], placed)
    assert cond(s, "Placed") == ("False", "MaxPerNodeReached")
    assert s["by_type"]["Placed"]["since"] == T0 + 5
    assert cond(s, "Ready") == ("False", "MaxPerNodeReached")
    assert "max_per_node=1" in s["by_type"]["Ready"]["message"]
    assert cond(s, "Progressing") == ("False", "Stalled")
    assert s["phase"] == "provisioning" and s["pending"] == 1


def test_generation_not_yet_placed():
    s = status(grp(1, generation=2, updated_at=T0 + 40), [inst(1, "ready", ready_at=T0 + 9)],
               GroupStatus(observed_generation=1))
    assert cond(s, "Placed") == ("False", "PlacementPending")
    assert s["by_type"]["Placed"]["since"] == T0 + 40
    assert cond(s, "Progressing") == ("True", "PlacementPending")


def test_scale_out_in_flight_is_progressing_by_scaling():
    s = status(grp(2), [inst(1, "ready", ready_at=T0 + 9)])
    assert cond(s, "Ready") == ("False", "Scaling") and cond(s, "Progressing") == ("True", "Scaling")


def test_failed_instances_are_quoted_with_their_reasons():
    s = status(grp(3), [inst(1, "failed", reason=Reason.READY_TIMEOUT, state_since=T0 + 50,
                             message="no readiness line from the guest within its ready_timeout of 30 s"),
                        inst(2, "failed", reason=Reason.READY_TIMEOUT, state_since=T0 + 51,
                             message="no readiness line from the guest within its ready_timeout of 30 s"),
                        inst(3, "ready", ready_at=T0 + 10)])
    assert s["phase"] == "degraded"
    assert cond(s, "Ready") == ("False", "InstancesFailed")
    msg = s["by_type"]["Ready"]["message"]
    assert msg.startswith("1/3 ready: 2 instance(s) failed: no readiness line") and "(2 instances)" in msg
    assert s["by_type"]["Ready"]["since"] == T0 + 50
    assert cond(s, "Progressing") == ("False", "Stalled")


def test_booting_guests_show_since_when_and_the_ready_timeout():
    s = status(grp(2, ready_timeout=120), [inst(1, "running", running_at=T0 + 10), inst(2, "running",
                                                                                       running_at=T0 + 12)])
    assert cond(s, "Ready") == ("False", "GuestsBooting")
    assert "2 guest(s) booting" in s["by_type"]["Ready"]["message"]
    assert "120 s after their start" in s["by_type"]["Ready"]["message"]
    assert s["by_type"]["Ready"]["since"] == T0 + 10      # the longest booting
    assert cond(s, "Progressing") == ("True", "GuestsBooting")


def test_rolling_update_in_progress():
    s = status(grp(2, generation=2, updated_at=T0 + 30),
               [inst(1, "ready", image="old", ready_at=T0 + 5), inst(2, "ready", ready_at=T0 + 45),
                inst(3, "running", running_at=T0 + 50)],
               GroupStatus(observed_generation=2))
    assert cond(s, "Progressing") == ("True", "RollingUpdate")
    assert "1 outdated instance(s) left" in s["by_type"]["Ready"]["message"]
    assert s["phase"] == "provisioning"


def test_deleting():
    s = status(grp(2, deleting=True), [inst(1, "terminating")])
    assert s["phase"] == "deleting"
    assert cond(s, "Ready") == ("False", "Deleting")
    assert cond(s, "Progressing") == ("True", "Deleting")


def test_image_gone():
    s = status(grp(1), [inst(1, "pending", reason=Reason.IMAGE_NO_DATA)], image=None)
    assert cond(s, "ImageAvailable") == ("False", "ImageNotFound")
    assert s["phase"] == "degraded"


def test_empty_group_is_ready():
    s = status(grp(0), [])
    assert s["phase"] == "ready" and cond(s, "Ready") == ("True", "AllReady")


@pytest.mark.parametrize("nodes, room, missing, limit, reason", [
    (0, 0, 2, None, Reason.NO_COMPUTE_NODES),
    (1, 1, 2, None, Reason.NO_CAPACITY),
    (1, 5, 2, 1, Reason.MAX_PER_NODE),
    (2, 1, 2, 1, Reason.NO_CAPACITY),
])
def test_unplaced_reason(nodes, room, missing, limit, reason):
    assert unplaced_reason(nodes, room, missing, limit) == reason
