"""The walking skeleton end to end: HTTP -> ZooKeeper -> agents -> libvirt -> guests.

Real ZooKeeper, libvirtd, qemu (TCG where KVM does not really run guests),
gunicorn and both agents, as ``cowfleet lab up`` starts them.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

import libvirt
import pytest
from kazoo.exceptions import NoNodeError

from cowfleet.agents.compute.sessions import SessionManager, nbd_url
from cowfleet.models import DeployRequest
from cowfleet.zk import layout
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lab_domains(lab) -> list[str]:
    conn = libvirt.open("qemu:///system")
    try:
        return [d.name() for d in conn.listAllDomains() if d.name().startswith(f"cf-{lab.state.lab_id}-")]
    finally:
        conn.close()


def group_domains(lab, group: str) -> list[str]:
    """The lab's domains of one group's instances (ids are ``<group>-<6 hex>``)."""
    mine = re.compile(rf"--{re.escape(group)}-[0-9a-f]{{6}}$")
    return [d for d in lab_domains(lab) if mine.search(d)]


def requests_for(zk, group: str) -> list[str]:
    """The queued deployment requests of one group (the queue is the whole lab's)."""
    mine = []
    for seq in zk.get_children(layout.REQUESTS):
        try:
            data, _ = zk.get(f"{layout.REQUESTS}/{seq}")
        except NoNodeError:
            continue
        if DeployRequest.from_bytes(data).group == group:
            mine.append(seq)
    return mine


def compute_dir(lab) -> Path:
    return next(p for p in (lab.dir / "nodes").iterdir() if p.name.endswith("-compute-1"))


def master_path(lab) -> Path:
    storage = next(p for p in (lab.dir / "nodes").iterdir() if p.name.endswith("-storage-1"))
    return storage / "images" / "demo.img"


def test_group_of_three_boots_on_overlays_and_deletes_clean(lab, client, zk, image_demo, own_groups):
    own_groups.append("web")
    master = master_path(lab)
    master_sha = image_demo["sha256"]
    assert sha256(master) == master_sha

    t0 = time.monotonic()
    created = client.request("PUT", "/v1/instance-groups/web",
                             {"image": "demo", "flavor": "small", "size": 3})
    put_ms = (time.monotonic() - t0) * 1000
    assert created.status_code == 201
    assert created.json()["status"]["phase"] in ("pending", "provisioning")
    assert created.headers["ETag"] == f'"{created.json()["etag"]}"'

    running = wait_until(lambda: client.get_group("web")["status"]["running"] == 3, 120, "3 running")
    t_running = time.monotonic() - t0
    group = wait_until(lambda: (g := client.get_group("web"))["status"]["phase"] == "ready" and g,
                       300, "group web ready")
    t_ready = time.monotonic() - t0
    print(f"\nPUT {put_ms:.0f} ms; all 3 running after {t_running:.1f}s, ready after {t_ready:.1f}s")
    assert running
    assert group["status"]["ready"] == 3
    assert len(group["instances"]) == 3
    for inst in group["instances"]:
        assert inst["state"] == "ready"
        assert inst["node"].endswith("-compute-1")
        assert inst["running_at"] and inst["ready_at"] and inst["created_at"]

    # one overlay per instance, each backed by the host's one NBD export of
    # the master's iSCSI LUN (streamed, never copied)
    overlays = sorted((compute_dir(lab) / "overlays" / "web").glob("*.qcow2"))
    assert {p.stem for p in overlays} == {i["id"] for i in group["instances"]}
    key = f"demo-{master_sha[:12]}"
    sessions = SessionManager(compute_dir(lab) / "sessions")
    url = nbd_url(str(sessions.socket(key)), key)       # the export named by the session, the socket
    assert sessions.socket(key).resolve().parent == (compute_dir(lab) / "sessions" / key).resolve()
    for overlay in overlays:
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", "--backing-chain", str(overlay)],
            check=True, capture_output=True, text=True).stdout)
        assert info[0]["format"] == "qcow2"
        assert info[0]["backing-filename"] == url
        assert info[1]["filename"] == url
        assert len(info) == 2
    # this group's domains, exactly: the session lab may hold other tests'
    # (one being torn down, a crash test's leftover), which are not ours to count
    assert sorted(group_domains(lab, "web")) == sorted(f"cf-{i['node']}--{i['id']}" for i in group["instances"])

    # the guests wrote to their disks (boot record + scratch data): into the
    # overlays, never into the master
    for overlay in overlays:
        assert overlay.stat().st_size > 512 * 1024, "guest writes should land in the overlay"
    assert sha256(master) == master_sha

    # delete: 202, deleting, then 404 with nothing left behind
    resp = client.request("DELETE", "/v1/instance-groups/web")
    assert resp.status_code == 202
    again = client.request("DELETE", "/v1/instance-groups/web", ok_404=True)
    assert again.status_code in (202, 404)
    wait_until(lambda: client.get_group("web") is None, 120, "group web gone")
    # nothing of this test's group is left (other tests' objects are theirs)
    assert group_domains(lab, "web") == []
    assert not list((compute_dir(lab) / "overlays").glob("web/*"))
    assert not list((compute_dir(lab) / "seeds").glob("web/*"))
    assert not zk.exists(layout.group("web"))
    node_assignments = [c for n in zk.get_children(layout.ASSIGNMENTS)
                        for c in zk.get_children(layout.assignments(n)) if c.startswith("web:")]
    assert node_assignments == []
    assert requests_for(zk, "web") == []
    assert sha256(master) == master_sha
