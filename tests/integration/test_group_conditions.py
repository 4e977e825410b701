"""Groups that say why they are not ready (issue 19, item 2): conditions in
the API and the CLI, a group on an image in error refused, a guest that never
boots failed after the group's ready_timeout."""
from __future__ import annotations

import json

import pytest

from cowfleet.client import ApiError
from cowfleet.protocol import ProblemType
from tests.helpers import wait_until
from tests.integration.test_cli import ok, one_line_error

pytestmark = pytest.mark.integration


def conditions(g: dict) -> dict:
    return {c["type"]: c for c in g["status"]["conditions"]}


def test_a_ready_group_shows_its_conditions_in_the_api_and_the_cli(cli, client, image_demo, own_groups):
    own_groups.append("cond-ok")
    g = json.loads(ok(cli("group", "create", "cond-ok", "--image", "demo", "--size", "1", "--wait",
                          "-o", "json")).stdout)
    c = conditions(g)
    assert [x["type"] for x in g["status"]["conditions"]] == ["ImageAvailable", "Placed", "Ready", "Progressing"]
    assert (c["ImageAvailable"]["status"], c["Placed"]["status"], c["Ready"]["status"]) == ("True",) * 3
    assert c["Ready"]["reason"] == "AllReady" and c["Ready"]["since"] == g["instances"][0]["ready_at"]
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("False", "Complete")
    assert g["ready_timeout"] == 900 and g["instances"][0]["reason"] == ""
    table = ok(cli("group", "get", "cond-ok")).stdout
    assert "CONDITION" in table and "AllPlaced" in table and "AllReady" in table
    # the OpenAPI document describes them
    doc = client.request("GET", "/v1/openapi.json").json()
    schemas = doc["components"]["schemas"]
    status = next(s for n, s in schemas.items() if "conditions" in s.get("properties", {}))
    assert status["properties"]["conditions"]["type"] == "array"


def test_a_group_on_an_image_in_error_is_refused_naming_image(cli, client, image_demo, own_groups):
    client.put_image("cond-gone", source_url="file:///var/tmp/cowfleet-no-such-file.raw", format="raw",
                     min_replicas=1)
    try:
        img = wait_until(lambda: (i := client.get_image("cond-gone"))["status"] == "error" and i, 60,
                         "image cond-gone in error")
        own_groups.append("cond-bad")
        with pytest.raises(ApiError) as err:
            client.put_group("cond-bad", image="cond-gone", flavor="small", size=1)
        assert err.value.status == 422 and err.value.type == ProblemType.INVALID
        assert "is in error" in err.value.problem["errors"]["image"][0]
        assert "no-such-file" in err.value.problem["errors"]["image"][0], img
        # the detail says what the field says (not that the image does not exist)
        assert err.value.problem["detail"] == err.value.problem["errors"]["image"][0]
        one_line_error(cli("group", "create", "cond-bad", "--image", "cond-gone"), 1, "image", "in error")
        assert client.get_group("cond-bad") is None
        # a group already made may not move onto it either, and keeps working
        own_groups.append("cond-move")
        client.put_group("cond-move", image="demo", flavor="small", size=0)
        with pytest.raises(ApiError) as err:
            client.patch_group("cond-move", {"image": "cond-gone"})
        assert err.value.status == 422 and "image" in err.value.problem["errors"]
        assert client.patch_group("cond-move", {"labels": {"a": "b"}})["image"] == "demo"
    finally:
        client.delete_group("cond-move")
        wait_until(lambda: client.get_group("cond-move") is None, 60, "group cond-move gone")
        client.delete_image("cond-gone")


def test_a_guest_that_never_boots_fails_after_the_ready_timeout_and_says_why(cli, client, never_boots,
                                                                             own_groups):
    own_groups.append("cond-stuck")
    client.put_group("cond-stuck", image=never_boots, flavor="small", size=1, ready_timeout=10)
    booting = wait_until(lambda: (g := client.get_group("cond-stuck"))["instances"]
                         and g["instances"][0]["state"] == "running" and g, 120, "the instance running")
    c = conditions(booting)
    assert c["Ready"]["reason"] == "GuestsBooting" and "10 s after their start" in c["Ready"]["message"]
    assert c["Progressing"]["status"] == "True"
    g = wait_until(lambda: (g := client.get_group("cond-stuck"))["status"]["failed"] == 1 and g, 60,
                   "the instance failed by its ready timeout")
    inst = g["instances"][0]
    assert inst["state"] == "failed" and inst["reason"] == "ReadyTimeout"
    assert "ready_timeout of 10 s" in inst["message"]
    # failed no sooner than the timeout after its start
    assert inst["state_since"] >= inst["running_at"]
    c = conditions(g)
    assert g["status"]["phase"] == "degraded"
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "InstancesFailed")
    assert "ready_timeout of 10 s" in c["Ready"]["message"]
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("False", "Stalled")
    # the CLI says it: get's table, and wait exits 1 with the reason
    table = ok(cli("group", "get", "cond-stuck")).stdout
    assert "InstancesFailed" in table and "ReadyTimeout" in table
    waited = cli("group", "wait", "cond-stuck", "--timeout", "30")
    # the reason is the error: one line on stderr; stdout holds the result alone
    # (stderr's other lines are the progress)
    errors = [line for line in waited.stderr.splitlines() if line.startswith("cowfleet: ")]
    assert waited.returncode == 1 and len(errors) == 1, waited.stderr
    assert errors[0].startswith("cowfleet: instance group cond-stuck: 1 failed: InstancesFailed")
    assert "failed" not in waited.stdout
    # failed stays failed (its domain stopped, nothing restarts it)
    assert client.get_group("cond-stuck")["instances"][0]["state"] == "failed"
    # and the group's events tell the story, the failure with its reason
    told = [(e["reason"], e["instance"]) for e in client.group_events("cond-stuck")]
    assert told[0] == ("Created", None) and ("Placed", inst["id"]) in told
    assert told.index(("Started", inst["id"])) < told.index(("Failed", inst["id"]))
    failed = next(e for e in client.group_events("cond-stuck") if e["reason"] == "Failed")
    assert failed["type"] == "Warning" and failed["message"].startswith("ReadyTimeout: ")


def test_a_guest_whose_kernel_panics_fails_at_once_not_after_the_ready_timeout(client, image_demo, own_groups):
    """A real kernel panic (the demo guest's user data asks its kernel to
    crash, before the readiness line): the instance is failed with the
    panic's reason within seconds, not after the default 900 s ready_timeout
    (a guest that panicked at every boot on a loaded host made a Terraform
    apply wait out its 10 min)."""
    own_groups.append("cond-panic")
    client.put_group("cond-panic", image="demo", flavor="small", size=1,
                     user_data="#!/bin/sh\necho c > /proc/sysrq-trigger\n")
    g = wait_until(lambda: (g := client.get_group("cond-panic"))["status"]["failed"] == 1 and g, 300,
                   "the instance failed by its kernel panic")
    assert g["ready_timeout"] == 900
    inst = g["instances"][0]
    assert inst["state"] == "failed" and inst["reason"] == "GuestKernelPanic", inst
    assert "kernel panicked" in inst["message"] and "sysrq" in inst["message"], inst["message"]
    assert inst["state_since"] >= inst["running_at"]      # RFC 3339 UTC strings: they sort as times
    c = conditions(g)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "InstancesFailed")
    # the console keeps the panic for whoever looks
    text, _ = client.console("cond-panic", inst["id"])
    assert "Kernel panic - not syncing" in text
