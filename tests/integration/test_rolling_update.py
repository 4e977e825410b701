"""Changing a group's image replaces its instances in rolling fashion."""
from __future__ import annotations

import time

import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def test_image_change_rolls_within_update_policy(client, demo_image, image_demo):
    client.put_image("demo-b", source_url=f"file://{demo_image}", format="raw", min_replicas=1)
    wait_until(lambda: client.get_image("demo-b")["status"] == "available", 60, "image demo-b")
    policy = {"max_unavailable": 0, "max_surge": 1}
    client.put_group("roll", image="demo", flavor="small", size=2, update_policy=policy)
    try:
        wait_until(lambda: client.get_group("roll")["status"]["phase"] == "ready", 300, "roll ready")
        before = {i["id"] for i in client.get_group("roll")["instances"]}

        changed = client.request("PATCH", "/v1/instance-groups/roll", {"image": "demo-b"}).json()
        assert changed["generation"] == 2
        assert changed["status"]["phase"] != "ready"   # old instances no longer count as ready
        min_available, max_live = 2, 0
        deadline = time.monotonic() + 400
        while True:
            g = client.get_group("roll")
            live = [i for i in g["instances"] if i["state"] != "terminating"]
            min_available = min(min_available, sum(i["state"] == "ready" for i in live))
            max_live = max(max_live, len(live))
            if g["status"]["phase"] == "ready":
                break
            assert time.monotonic() < deadline, g
            time.sleep(0.2)
        assert [i["image"] for i in live] == ["demo-b", "demo-b"]
        assert not before & {i["id"] for i in live}, "every instance was replaced"
        wait_until(lambda: len(client.get_group("roll")["instances"]) == 2, 60, "the last old instance gone")
        assert min_available >= 2, "max_unavailable=0: availability never dropped"
        assert max_live <= 3, "max_surge=1: never more than size + 1 instances"
        assert g["status"]["ready"] == 2
    finally:
        client.delete_group("roll")
        wait_until(lambda: client.get_group("roll") is None, 120, "group roll gone")
        client.delete_image("demo-b")
