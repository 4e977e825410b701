"""Real VMs in the racks lab: two racks, one compute and one storage node
each, every node in its own network namespace, guests under libvirt (TCG).

- the demo image (one replica) is read over iSCSI by a qemu-storage-daemon
  that runs in each compute node's namespace, from the storage node's own
  tgtd at its node address: for the compute node of the other rack, across
  racks;
- a spread group puts one instance in each rack; both compute namespaces
  fetch both instances' pages (one on the local bridge, one routed via the
  peer compute node);
- instances reach each other across racks: a second spread group's
  user-data fetches the first group's pages from inside its guests;
- the console endpoint shows the guest's readiness line;
- deleting the groups leaves no domain, tap or image session of the lab.

This module makes a racks lab of its own (the session's ``racks_lab`` is a
fake-hypervisor one); it needs libvirtd, qemu and the demo guest.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from cowfleet.agents.compute.network import tap_name
from cowfleet.agents.compute.sessions import daemons_under
from cowfleet.client import ApiError
from cowfleet.guest.builder import READY_MARKER
from cowfleet.lab import netns
from tests.conftest import _workdir
from tests.helpers import placed_by_one_handshake, wait_until

pytestmark = pytest.mark.lab

READY_TIMEOUT = 240          # TCG guests on a busy 2-core machine
GONE_TIMEOUT = 180
GROUP_A, GROUP_B = "vms-a", "vms-b"
ISCSI_PORT = 3260


# -- the lab ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def vm_lab(libvirtd):
    from cowfleet.lab.racks import RacksLab
    d = _workdir("cowfleet-racks-vms-")
    lab = RacksLab(d / "lab", racks=2, nodes_per_rack=1, zk=1, fake=False)
    try:
        lab.up(progress=print)
        yield lab
    finally:
        lab.down(progress=print)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def api(vm_lab):
    from cowfleet.client import Client
    return Client(vm_lab.state.endpoint, vm_lab.state.token)


@pytest.fixture(scope="module")
def demo(vm_lab, api, demo_image):
    """The demo guest uploaded through the API, on ONE storage node: the
    compute node of the other rack then reads it across racks (the storage
    leaders hand out the asker's rack's replicas first, so with a replica
    in each rack every compute node would read from its own rack)."""
    api.put_image("demo", format="raw", min_replicas=1)
    img = api.upload_image("demo", demo_image)
    assert img["status"] == "available" and len(img["replicas"]) == 1, img
    return img


def _delete(api, name):
    try:
        api.delete_group(name)
    except ApiError:
        pass            # the finalizer tries; a failure shows in the lab's own checks


@pytest.fixture(scope="module")
def group_a(vm_lab, api, demo):
    # one instance in each rack takes every rack's answer in one hand-shake: a
    # run where one timed out is made again (tests/helpers.py)
    placed_by_one_handshake(api, GROUP_A, dict(image="demo", flavor="small", size=2,
                                               placement={"strategy": "spread"}),
                            {n.rack for n in vm_lab.nodes("compute")}, timeout=GONE_TIMEOUT)
    yield wait_ready(vm_lab, api, GROUP_A, 2)
    _delete(api, GROUP_A)          # test_delete_leaves_nothing normally did already


@pytest.fixture(scope="module")
def group_b(vm_lab, api, group_a):
    """Spread over both racks; each instance's user-data fetches both of
    group A's pages (busybox wget, a bounded retry loop) and prints them."""
    fetch = " ".join(i["address"] for i in group_a["instances"])
    user_data = f"""#!/bin/sh
for a in {fetch}; do
  i=0
  until timeout 10 wget -q -O /tmp/page "http://$a/"; do
    i=$((i+1))
    if [ $i -ge 20 ]; then echo "FETCH-FAILED $a"; break; fi
    sleep 1
  done
  echo "=== page of $a"
  cat /tmp/page 2>/dev/null
  rm -f /tmp/page
done
"""
    placed_by_one_handshake(api, GROUP_B, dict(image="demo", flavor="small", size=2,
                                               placement={"strategy": "spread"}, user_data=user_data),
                            {n.rack for n in vm_lab.nodes("compute")}, timeout=GONE_TIMEOUT)
    yield wait_ready(vm_lab, api, GROUP_B, 2)
    _delete(api, GROUP_B)


# -- helpers -------------------------------------------------------------------------

def _tail(path: Path, lines: int = 30) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return [f"({exc})"]


def diagnostics(lab, api=None, groups: tuple[str, ...] = (GROUP_A, GROUP_B)) -> str:
    """Groups, the agents' log tails and the guests' console tails."""
    out = []
    if api is not None:
        for g in groups:
            try:
                got = api.get_group(g)
            except Exception as exc:    # noqa: BLE001 -- diagnostics never hide the failure
                got = repr(exc)
            if got is not None:
                out.append(f"group {g}: {json.dumps(got, default=str)[:3000]}")
    for n in lab.nodes("compute") + lab.nodes("storage"):
        out.append(f"--- {n.short} agent log {n.log} (last 30 lines):")
        out += _tail(n.log)
    for n in lab.nodes("compute"):
        for console in sorted((state_dir(n) / "consoles").glob("*.log")):
            out.append(f"--- console {console.name} on {n.short} (last 15 lines):")
            out += _tail(console, 15)
    return "\n".join(out)


def wait(lab, api, condition, timeout: float, what: str, interval: float = 1.0):
    """wait_until, with the lab's diagnostics in the failure."""
    try:
        return wait_until(condition, timeout, what, interval=interval)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(lab, api)}") from None


def wait_ready(lab, api, name: str, size: int) -> dict:
    def ready():
        g = api.get_group(name)
        failed = [i for i in (g or {}).get("instances", []) if i["state"] == "failed"]
        assert not failed, f"instances of {name} failed: {failed}\n{diagnostics(lab, api)}"
        if g and g["status"]["phase"] == "ready" and len(g["instances"]) == size \
                and all(i["state"] == "ready" for i in g["instances"]):
            return g
        return None
    return wait(lab, api, ready, READY_TIMEOUT, f"group {name}: {size} instances ready", interval=2)


def fetch_in(ns: str, url: str, timeout: float = 10) -> str | None:
    """GET ``url`` from inside network namespace ``ns``; None on any failure."""
    code = (f"import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout={timeout})"
            ".read().decode(errors='replace'))")
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, url],
                              capture_output=True, text=True, timeout=timeout + 20, check=False)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout if proc.returncode == 0 else None


def page_of(lab, api, ns: str, addr: str, timeout: float = 30) -> str:
    return wait(lab, api, lambda: fetch_in(ns, f"http://{addr}/"), timeout, f"http://{addr}/ from {ns}")


def state_dir(n) -> Path:
    """An agent's state folder, as the provisioning scripts make it."""
    return Path(n.root) / "var" / "lib" / "cowfleet" / n.name


def sessions_root(n) -> Path:
    """The compute agent's sessions folder; the daemons name their sockets
    through short links to folders under it (agents/compute/sessions.py)."""
    return state_dir(n) / "sessions"


def netns_inode(ns: str) -> int:
    return os.stat(f"{netns.NETNS_DIR}/{ns}").st_ino


def links(ns: str | None = None) -> list[str]:
    args = (["-n", ns] if ns else []) + ["-br", "link"]
    return [line.split()[0].split("@")[0] for line in netns.ip(*args).splitlines() if line.strip()]


# -- the checks ----------------------------------------------------------------------

def test_a_spread_group_puts_one_instance_in_each_rack(vm_lab, api, group_a):
    nodes = {i["node"] for i in group_a["instances"]}
    racks = {i["rack"] for i in group_a["instances"]}
    assert len(nodes) == 2 and len(racks) == 2, group_a["instances"]
    assert nodes == {n.name for n in vm_lab.nodes("compute")}
    subnets = {c["node"]: ipaddress.ip_network(c["subnet"]) for c in api.network()["subnets"]}
    for inst in group_a["instances"]:
        assert ipaddress.ip_address(inst["address"]) in subnets[inst["node"]], (inst, subnets)


def test_each_compute_node_reads_the_image_over_iscsi_from_the_storage_node(vm_lab, api, demo, group_a):
    """One qemu-storage-daemon per compute node, in that node's namespace,
    its portal the replica's storage node address (never loopback); the
    storage node's tgtd holds a connection from each compute node."""
    holder = vm_lab.nodes("storage")
    holder = next(s for s in holder if s.name == demo["replicas"][0]["node"])
    portal = f"{holder.addr}:{ISCSI_PORT}"
    seen = {}
    for n in vm_lab.nodes("compute"):
        metas = [json.loads(p.read_text()) for p in sessions_root(n).glob("*/session.json")]
        assert [(m["image"], m["node"], m["portal"]) for m in metas] == [("demo", holder.name, portal)], \
            f"{n.short}: sessions {metas}\n{diagnostics(vm_lab, api)}"
        daemons = daemons_under(sessions_root(n))
        assert len(daemons) == 1, f"{n.short}: {daemons}"
        (pid, cmdline), = daemons.items()
        assert any(f"portal={portal}," in a for a in cmdline), cmdline
        assert "127.0.0.1" not in " ".join(cmdline), cmdline
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns_inode(n.netns), \
            f"{n.short}'s qemu-storage-daemon {pid} does not run in {n.netns}"
        seen[n.short] = (n.rack, portal)
    assert any(rack != holder.rack for rack, _ in seen.values()), \
        f"no compute node reads from the other rack's storage node: {seen}, image on {holder.short}"
    # the iSCSI connections, as the storage node's namespace sees them
    est = netns.ip("netns", "exec", holder.netns, "ss", "-Htn", "state", "established",
                   "sport", "=", f":{ISCSI_PORT}")
    peers = {line.split()[-1].rsplit(":", 1)[0] for line in est.splitlines() if line.strip()}
    assert {n.addr for n in vm_lab.nodes("compute")} <= peers, est


def test_both_compute_namespaces_reach_both_instances(vm_lab, api, group_a):
    for n in vm_lab.nodes("compute"):
        for inst in group_a["instances"]:
            page = page_of(vm_lab, api, n.netns, inst["address"])
            where = f"page of {inst['id']} ({inst['node']}) fetched in {n.netns}:\n{page}"
            assert f"instance-id: {inst['id']}\n" in page, where
            assert f"hostname: {inst['id']}\n" in page, where
            assert f"address: {inst['address']}/" in page, where


def test_instances_reach_each_other_across_racks(vm_lab, api, group_a, group_b):
    assert len({i["rack"] for i in group_b["instances"]}) == 2, group_b["instances"]
    a_ids = {i["id"] for i in group_a["instances"]}
    ns = vm_lab.nodes("compute")[0].netns
    for inst in group_b["instances"]:
        page = page_of(vm_lab, api, ns, inst["address"])
        where = f"page of {inst['id']} ({inst['node']}):\n{page}"
        assert f"instance-id: {inst['id']}\n" in page and "FETCH-FAILED" not in page, \
            f"{where}\n{diagnostics(vm_lab, api)}"
        output = page.split("user-data-output:", 1)[1]
        for a in group_a["instances"]:       # one of them in the other rack
            assert f"=== page of {a['address']}\ninstance-id: {a['id']}\n" in output, where
        assert {i for i in a_ids if f"instance-id: {i}\n" in output} == a_ids, where


def test_console_endpoint_shows_the_readiness_line(vm_lab, api, group_a):
    inst = group_a["instances"][1]
    resp = requests.get(f"{vm_lab.state.endpoint}/v1/instance-groups/{GROUP_A}/instances/{inst['id']}/console",
                        headers={"Authorization": f"Bearer {vm_lab.state.reader_token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert READY_MARKER in resp.text and f"address={inst['address']}/" in resp.text, resp.text[-2000:]


def test_deleting_the_groups_leaves_no_domain_tap_or_session(vm_lab, api, group_a, group_b):
    ids = [i["id"] for g in (group_a, group_b) for i in g["instances"]]
    for name in (GROUP_A, GROUP_B):
        api.delete_group(name)
    wait(vm_lab, api, lambda: api.get_group(GROUP_A) is None and api.get_group(GROUP_B) is None,
         GONE_TIMEOUT, "both groups gone")
    prefix = f"cf-{vm_lab.state.lab_id}-"
    virsh = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert virsh.returncode == 0, virsh.stderr
    assert not [d for d in virsh.stdout.split() if d.startswith(prefix)], virsh.stdout
    ours = {tap_name(i) for i in ids}
    assert not ours & set(links()), f"taps of the lab's instances left in the root namespace: {links()}"
    for n in vm_lab.nodes("compute"):
        left = [t for t in links(n.netns) if t.startswith("cft-")]
        assert not left, f"taps left in {n.netns}: {left}\n{diagnostics(vm_lab, api)}"
        assert not daemons_under(sessions_root(n)), f"image session left on {n.short}"
