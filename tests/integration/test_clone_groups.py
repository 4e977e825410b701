"""Groups with ``start: clone`` on the session lab (issue 13), real VMs: the
compute node makes a warm-clone template of the demo image on first use
and restores each instance from it with its own NIC and NoCloud seed, so
every clone answers on its own address with its own id, host name and user
data (run once) and RNG; a template whose save image is corrupt is never
restored (the instance boots and says why); an agent killed while making a
template leaves no domain or half-made template behind, and one killed with
a clone restored but paused (its devices maybe not plugged) starts it anew."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
import requests

from cowfleet.agents.compute.savefile import HEADER_LEN, MAGIC
from cowfleet.network import mac_for
from tests.helpers import wait_until
from tests.integration.test_crash_points import Pause, compute_dir
from tests.integration.test_crash_safety import domains

pytestmark = pytest.mark.integration

# what each clone's user data says on its page: how many times user data
# ran on this disk (a template's runs included) and 16 bytes of its RNG
USER_DATA = """#!/bin/sh
echo run >> /var/lib/cowfleet/user-data-runs
echo "runs=$(wc -l < /var/lib/cowfleet/user-data-runs) random=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' ')"
"""


def templates(lab) -> list[Path]:
    root = compute_dir(lab) / "templates"
    return sorted(root.iterdir()) if root.exists() else []


@pytest.fixture
def no_templates_left(lab):
    """Afterwards the templates a test made are removed (after its groups:
    own_groups is set up later, so torn down first), so that the image's
    session goes as it would without them."""
    yield
    for t in templates(lab):
        shutil.rmtree(t, ignore_errors=True)


@pytest.fixture
def clone_group(no_templates_left, own_groups):
    own_groups.append("clones")         # deleted and waited for, whatever happens
    return "clones"


def ready(client, name: str, size: int):
    g = client.get_group(name)
    return g if g and g["status"]["phase"] == "ready" and len(g["instances"]) == size \
        and all(i["state"] == "ready" for i in g["instances"]) else None


def page(inst) -> dict[str, str]:
    text = requests.get(f"http://{inst['address']}/", timeout=10).text
    return dict(line.split(": ", 1) if ": " in line else line.split("=", 1) if "=" in line else (line, "")
                for line in text.replace(" random=", "\nrandom=").splitlines())


def test_a_clone_group_of_three_gets_three_identities(lab, client, image_demo, clone_group):
    client.put_group(clone_group, image="demo", flavor="small", size=3, user_data=USER_DATA, start="clone")
    g = wait_until(lambda: ready(client, clone_group, 3), 300, "the clone group ready")
    assert g["start"] == "clone"
    insts = g["instances"]
    assert [(i["start"], i["start_reason"]) for i in insts] == [("clone", "")] * 3, insts
    pages = [page(i) for i in insts]
    for inst, p in zip(insts, pages):
        assert p["instance-id"] == inst["id"] and p["hostname"] == inst["id"], p
        assert p["address"].split("/")[0] == inst["address"] and p["clone"] == "1", p
        assert p["runs"] == "1", p                # user data ran once, in this clone
    for field in ("instance-id", "hostname", "address", "random"):
        assert len({p[field] for p in pages}) == 3, (field, pages)
    assert len({i["mac"] for i in insts}) == 3 and len({i["address"] for i in insts}) == 3
    # one template on the node, whole, its disk layer frozen
    [t] = templates(lab)
    assert sorted(p.name for p in t.iterdir()) == ["console.log", "disk.qcow2", "memory.save", "meta.json"]
    assert (t / "disk.qcow2").stat().st_mode & 0o222 == 0
    assert not [d for d in domains(lab) if "~tmpl--" in d], "the template's domain stopped at its save"


def test_a_corrupt_template_is_never_restored_the_instance_boots(lab, client, image_demo, clone_group):
    client.put_group(clone_group, image="demo", flavor="small", size=1, user_data=USER_DATA, start="clone")
    g = wait_until(lambda: ready(client, clone_group, 1), 300, "the first clone ready")
    [first] = g["instances"]
    assert first["start"] == "clone"
    [t] = templates(lab)
    save = t / "memory.save"
    raw = bytearray(save.read_bytes()[:HEADER_LEN])
    assert raw[:16] == MAGIC
    raw[16:20] = struct.pack("<I", 99)           # a version this libvirt never wrote
    with open(save, "r+b") as fh:
        fh.write(raw)
    client.put_group(clone_group, image="demo", flavor="small", size=2, user_data=USER_DATA, start="clone")
    g = wait_until(lambda: ready(client, clone_group, 2), 300, "the second instance ready")
    [second] = [i for i in g["instances"] if i["id"] != first["id"]]
    assert second["start"] == "boot" and "restoring from template" in second["start_reason"], second
    assert page(second)["clone"] == "0" and page(second)["runs"] == "1"
    assert not t.exists(), "the template that does not read back is dropped"


@pytest.mark.parametrize("point", ["template.booting", "template.saved"])
def test_an_agent_killed_making_a_template_leaves_none_behind(lab, client, image_demo, clone_group, point):
    pause = Pause(lab, point)
    pause.arm()
    client.put_group(clone_group, image="demo", flavor="small", size=1, user_data=USER_DATA, start="clone")

    def there():        # its folder is a half-made one; booting, its domain runs; saved, it is gone
        assert bool([d for d in domains(lab) if "~tmpl--" in d]) == (point == "template.booting")
        [half] = templates(lab)
        assert half.name.startswith(".making-")
        assert (half / "memory.save").exists() == (point == "template.saved")
    pause.kill_there_and_restart(there)
    g = wait_until(lambda: ready(client, clone_group, 1), 300, "the group ready after the kill")
    assert g["instances"][0]["start"] == "clone"
    assert not [d for d in domains(lab) if "~tmpl--" in d]
    assert [p.name.startswith(".") for p in templates(lab)] == [False], "swept, then made whole"


def test_an_agent_killed_with_a_clone_paused_starts_it_anew(lab, client, image_demo, clone_group):
    client.put_group(clone_group, image="demo", flavor="small", size=1, user_data=USER_DATA, start="clone")
    [first] = wait_until(lambda: ready(client, clone_group, 1), 300, "the first clone ready")["instances"]
    node = compute_dir(lab).name
    pause = Pause(lab, "start.paused")         # the template is made: only the restore passes here
    pause.arm()
    client.put_group(clone_group, image="demo", flavor="small", size=2, user_data=USER_DATA, start="clone")
    seen = {}

    def there():        # restored, paused, before its NIC and seed are plugged
        [name] = [d for d in domains(lab) if d.startswith(f"cf-{node}--{clone_group}-")
                  and not d.endswith(first["id"])]
        seen["name"] = name
    pause.kill_there_and_restart(there)
    g = wait_until(lambda: ready(client, clone_group, 2), 300, "the group ready after the kill")
    [inst] = [i for i in g["instances"] if i["id"] != first["id"]]
    assert inst["start"] == "clone" and page(inst)["instance-id"] == inst["id"]
    assert seen["name"].endswith("--" + inst["id"])
    assert sorted(d for d in domains(lab) if d.startswith(f"cf-{node}--{clone_group}-")) == \
        sorted(f"cf-{node}--{i['id']}" for i in g["instances"])


@pytest.fixture
def spares_node(lab, client, monkeypatch):
    """The lab's compute agent restarted keeping two warm spares per
    template (spares.py); afterwards restarted without, its start sweeping
    the spares it left."""
    monkeypatch.setenv("COWFLEET_WARM_SPARES", "2")
    lab.restart("agent-compute")
    yield compute_dir(lab).name
    monkeypatch.delenv("COWFLEET_WARM_SPARES")
    lab.restart("agent-compute")
    assert not spare_domains(lab), "the agent's start sweeps its spares"
    assert not list((compute_dir(lab) / "spares").iterdir())


def spare_domains(lab) -> set[str]:
    """Domains of spares, claimed ones included (a claimed spare keeps its name)."""
    return {d for d in domains(lab) if "~spare--" in d}


def spares_waiting(client, lab, n: int, domains_n: int | None = None) -> set[str] | None:
    node = next(x for x in client.nodes() if x["role"] == "compute")
    names = spare_domains(lab)
    return names if node["warm_spares"] == n and len(names) == (n if domains_n is None else domains_n) else None


def test_warm_spares_wait_paused_and_instances_claim_them(lab, client, image_demo, clone_group, spares_node):
    client.put_group(clone_group, image="demo", flavor="small", size=1, user_data=USER_DATA, start="clone")
    [first] = wait_until(lambda: ready(client, clone_group, 1), 300, "the first clone ready")["instances"]
    spares = wait_until(lambda: spares_waiting(client, lab, 2), 120, "two warm spares, once the node is idle")
    assert f"cf-{spares_node}--{first['id']}" in domains(lab), "the first one was restored for it"
    client.patch_group(clone_group, {"size": 3})
    g = wait_until(lambda: ready(client, clone_group, 3), 300, "the two new clones ready")
    new = [i for i in g["instances"] if i["id"] != first["id"]]
    pages = [page(i) for i in new]
    for inst, p in zip(new, pages):
        assert inst["start"] == "clone" and inst["start_reason"] == "", inst
        assert p["instance-id"] == inst["id"] and p["hostname"] == inst["id"], p
        assert p["address"].split("/")[0] == inst["address"] and p["clone"] == "1" and p["runs"] == "1", p
        assert (compute_dir(lab) / "overlays" / clone_group / f"{inst['id']}.qcow2").exists()
    assert pages[0]["random"] != pages[1]["random"]
    # each runs in the domain of a spare that waited (it keeps its name),
    # on the NIC the spare took when it was made (its MAC the instance's)
    assert spares <= domains(lab)
    assert {i["mac"] for i in new} == {mac_for(name.rsplit("--", 1)[1]) for name in spares}
    assert all(f"network eth0 mac={i['mac']} address={i['address']}/" in client.console(clone_group, i["id"])[0]
               for i in new)
    assert [d for d in domains(lab) if d.startswith(f"cf-{spares_node}--{clone_group}-")] == \
        [f"cf-{spares_node}--{first['id']}"]
    refilled = wait_until(lambda: spares_waiting(client, lab, 2, 4), 120, "the pool made whole again")
    assert spares < refilled
    client.patch_group(clone_group, {"size": 1})
    wait_until(lambda: ready(client, clone_group, 1), 120, "the claimed ones terminated")
    assert spares.isdisjoint(domains(lab)), "a claimed spare goes with its instance"


def test_an_agent_killed_claiming_a_spare_starts_the_instance_anew(lab, client, image_demo, clone_group,
                                                                   spares_node):
    client.put_group(clone_group, image="demo", flavor="small", size=1, user_data=USER_DATA, start="clone")
    [first] = wait_until(lambda: ready(client, clone_group, 1), 300, "the first clone ready")["instances"]
    spares = wait_until(lambda: spares_waiting(client, lab, 2), 120, "two warm spares")
    pause = Pause(lab, "spare.moved")
    pause.arm()
    client.patch_group(clone_group, {"size": 2})

    def there():        # the spare's overlay is the instance's; the domain is still a spare's
        [moved] = [p for p in (compute_dir(lab) / "overlays" / clone_group).iterdir() if first["id"] not in p.name]
        assert len(list((compute_dir(lab) / "spares").glob("*.qcow2"))) == 1, "one moved, one waits"
        assert spare_domains(lab) == spares
    pause.kill_there_and_restart(there)
    g = wait_until(lambda: ready(client, clone_group, 2), 300, "the group ready after the kill")
    [inst] = [i for i in g["instances"] if i["id"] != first["id"]]
    assert inst["start"] == "clone" and page(inst)["instance-id"] == inst["id"]
    assert spares.isdisjoint(domains(lab)), "the restart swept both spares, the half-claimed one too"
    wait_until(lambda: spares_waiting(client, lab, 2), 120, "a new pool")
