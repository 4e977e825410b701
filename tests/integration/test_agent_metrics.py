"""Every agent exports Prometheus metrics on its P2P endpoint (GET /metrics):
after a group boots in the session lab, each agent's figures say so."""
from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from an agent's /metrics."""
    resp = requests.get(f"{address}/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name: str, **labels) -> float:
    """The sum over every label set that has ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def agents(client) -> dict[str, dict]:
    nodes = client.request("GET", "/v1/nodes").json()
    return {role: next(n for n in nodes if n["role"] == role and n["address"]) for role in ("compute", "storage")}


def test_agents_export_metrics_after_a_group_boots(client, image_demo, own_groups):
    nodes = agents(client)
    before = {role: scrape(n["address"]) for role, n in nodes.items()}
    own_groups.append("watched")
    client.put_group("watched", image="demo", flavor="small", size=1)
    wait_until(lambda: client.get_group("watched")["status"]["phase"] == "ready", 300, "group watched ready")

    compute, storage = nodes["compute"], nodes["storage"]
    c0 = before["compute"]
    # the readiness line is recorded just after the instance's READY state
    c = wait_until(lambda: (m := scrape(compute["address"])) and
                   total(m, "cowfleet_agent_instance_ready_seconds_count")
                   > total(c0, "cowfleet_agent_instance_ready_seconds_count") and m,
                   30, "the compute agent's ready histogram counting the instance")
    s = scrape(storage["address"])

    # who it is, and that it leads its rack (the only agent of its role there)
    for m, n in ((c, compute), (s, storage)):
        assert value(m, "cowfleet_agent_info", node=n["name"], role=n["role"], rack=n["rack"]) == 1
        assert value(m, "cowfleet_agent_leader") == 1
        assert value(m, "cowfleet_agent_zookeeper_connected") == 1
        assert total(m, "cowfleet_agent_p2p_served_seconds_count") >= 1

    # one start, on one of the two data paths; its latency and the guest's boot are sane
    started = {p: value(c, "cowfleet_agent_instance_start_seconds_count", path=p)
               - value(c0, "cowfleet_agent_instance_start_seconds_count", path=p) for p in ("attached", "shared")}
    assert sorted(started.values()) == [0, 1], started
    path = next(p for p, n in started.items() if n == 1)
    took = value(c, "cowfleet_agent_instance_start_seconds_sum", path=path) \
        - value(c0, "cowfleet_agent_instance_start_seconds_sum", path=path)
    assert 0 < took < 300, took
    booted = total(c, "cowfleet_agent_instance_ready_seconds_sum") - \
        total(c0, "cowfleet_agent_instance_ready_seconds_sum")
    assert 0 < booted < 300, booted
    if path == "attached":
        # it asked the storage leader where the image is, over P2P
        assert value(c, "cowfleet_agent_p2p_call_seconds_count", route="/v1/locate", outcome="ok") \
            > value(c0, "cowfleet_agent_p2p_call_seconds_count", route="/v1/locate", outcome="ok")
        assert value(s, "cowfleet_agent_p2p_served_seconds_count", route="/v1/locate", status="200") >= 1
    # the service handed the request to the compute leader
    assert value(c, "cowfleet_agent_p2p_served_seconds_count", route="/v1/deploy", status="202") \
        > value(c0, "cowfleet_agent_p2p_served_seconds_count", route="/v1/deploy", status="202")

    # capacity and what the instance uses, the session it reads through
    assert value(c, "cowfleet_agent_capacity", resource="vcpus") > 0
    assert value(c, "cowfleet_agent_capacity", resource="memory_mib") > 0
    assert value(c, "cowfleet_agent_allocated", resource="instances") >= 1
    assert value(c, "cowfleet_agent_allocated", resource="vcpus") >= 1
    assert value(c, "cowfleet_agent_image_sessions") >= 1
    assert value(c, "cowfleet_agent_reservations") >= 0
    assert ("cowfleet_agent_reserved", (("resource", "vcpus"),)) in c

    # the storage node holds and publishes the image's copy; nothing is short of replicas of it
    assert value(s, "cowfleet_agent_copies") >= 1
    assert 1 <= value(s, "cowfleet_agent_replicas") <= value(s, "cowfleet_agent_copies")
    assert value(s, "cowfleet_agent_capacity", resource="disk_mib") > 0
    assert value(s, "cowfleet_agent_allocated", resource="images") >= 1
    assert ("cowfleet_agent_copy_backlog", ()) in s
    assert ("cowfleet_agent_copies_in_progress", ()) in s


def test_agent_metrics_route_labels_stay_bounded(client):
    """A path a caller makes up is counted as "other", never as a label of its own."""
    address = agents(client)["compute"]["address"]
    for i in range(3):
        assert requests.post(f"{address}/made-up-{i}", json={}, timeout=10).status_code == 404
    m = scrape(address)
    assert value(m, "cowfleet_agent_p2p_served_seconds_count", route="other", status="404") >= 3
    assert not [k for k in m if "made-up" in str(k)]
