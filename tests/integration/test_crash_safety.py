"""A compute agent killed (SIGKILL) at any point: nothing leaks, nothing is lost."""
from __future__ import annotations

import os
import signal

import libvirt
import pytest

from cowfleet.lab.components import pid_alive
from cowfleet.zk import layout
from tests.helpers import wait_until
from tests.integration.test_end_to_end import group_domains, requests_for

pytestmark = pytest.mark.integration


def domains(lab) -> set[str]:
    conn = libvirt.open("qemu:///system")
    try:
        return {d.name() for d in conn.listAllDomains() if d.name().startswith(f"cf-{lab.state.lab_id}-")}
    finally:
        conn.close()


def kill_compute(lab) -> None:
    pid = lab.state.pids["agent-compute"]
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, "the compute agent to die")


def test_agent_killed_mid_provisioning_then_mid_delete(lab, client, zk, image_demo, own_groups):
    own_groups.append("crash")
    client.put_group("crash", image="demo", flavor="small", size=2)
    # kill as soon as the first domain exists: the second may be half made
    wait_until(lambda: group_domains(lab, "crash"), 60, "a domain of the group to be created")
    kill_compute(lab)
    lab.restart("agent-compute")
    g = wait_until(lambda: (g := client.get_group("crash"))["status"]["phase"] == "ready" and g,
                   300, "group crash ready after the agent restarted")
    assert len(g["instances"]) == 2
    # (this group's domains: the session lab may hold other tests')
    assert sorted(group_domains(lab, "crash")) == sorted(f"cf-{i['node']}--{i['id']}" for i in g["instances"]), \
        "the restarted agent adopts running domains, no duplicates"

    # scale in while the only agent (and so the rack leader) is dead: the
    # request waits in ZooKeeper and is carried out when it comes back
    kill_compute(lab)
    client.put_group("crash", image="demo", flavor="small", size=1)
    assert len(requests_for(zk, "crash")) == 1
    assert len(group_domains(lab, "crash")) == 2
    lab.restart("agent-compute")
    wait_until(lambda: len(client.get_group("crash")["instances"]) == 1, 60, "scale-in to finish")
    assert len(group_domains(lab, "crash")) == 1

    # delete, and kill the agent right after the request: nothing may leak
    client.delete_group("crash")
    kill_compute(lab)
    lab.restart("agent-compute")
    wait_until(lambda: client.get_group("crash") is None, 120, "group crash gone")
    assert group_domains(lab, "crash") == []
    compute = next(p for p in (lab.dir / "nodes").iterdir() if p.name.endswith("-compute-1"))
    assert not list((compute / "overlays").glob("crash/*"))
    assert not list((compute / "consoles").glob("crash-*"))
    assert not zk.exists(layout.group("crash"))


def test_stray_domain_and_overlay_are_removed(lab, client, image_demo):
    """Leftovers with no assignment (e.g. from a crash before the commit) go away."""
    compute = next(p for p in (lab.dir / "nodes").iterdir() if p.name.endswith("-compute-1"))
    stray = compute / "overlays" / "ghost" / "ghost-000000.qcow2"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"")
    wait_until(lambda: not stray.exists(), 30, "the stray overlay to be removed")


def test_a_guest_whose_qemu_dies_is_started_again(lab, client, image_demo, own_groups):
    """A guest's qemu killed -9 (a crash of the VM, not of the agent): the
    agent hears libvirt's stopped event and starts the instance again from
    its master; the instance leaves ready at once and comes back ready on a
    new domain (the fault campaign found it shown ready with no VM until
    the agent's next round)."""
    import time
    from pathlib import Path
    own_groups.append("qcrash")
    client.put_group("qcrash", image="demo", flavor="small", size=1)
    g = wait_until(lambda: (g := client.get_group("qcrash"))["status"]["phase"] == "ready" and g, 180,
                   "group qcrash ready")
    before = g["instances"][0]
    [dom] = group_domains(lab, "qcrash")
    pid = int(Path(f"/run/libvirt/qemu/{dom}.pid").read_text())
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: client.get_group("qcrash")["instances"][0]["state"] != "ready", 60,
               "the instance to leave ready")
    noticed = time.monotonic() - t0
    g = wait_until(lambda: (g := client.get_group("qcrash"))["status"]["phase"] == "ready" and g, 180,
                   "group qcrash ready again")
    after = g["instances"][0]
    print(f"\na guest's qemu killed: its instance left ready after {noticed:.2f} s, "
          f"ready again after {time.monotonic() - t0:.1f} s")
    assert after["id"] == before["id"] and group_domains(lab, "qcrash") == [dom]
    assert int(Path(f"/run/libvirt/qemu/{dom}.pid").read_text()) != pid
