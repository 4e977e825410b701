"""The compute agent killed (SIGKILL) at each step of a start and of a
terminate (cowfleet/faults.py), then restarted as the lab starts it: the
group converges with exactly its instances -- each with the address it had,
its domain running, not left paused -- and after the delete nothing is left:
no domain, overlay, seed, console or image session, and no address held."""
from __future__ import annotations

from pathlib import Path

import pytest

from cowfleet.agents.compute.sessions import SessionManager
from tests.helpers import wait_until
from tests.integration.test_crash_safety import domains, kill_compute

pytestmark = pytest.mark.integration

START_POINTS = ("start.allocated", "start.addressed", "start.attached", "start.overlay", "start.seed-partial",
                "start.seeded", "start.paused", "start.domain")
TERMINATE_POINTS = ("terminate.destroyed", "terminate.files", "session.stop")


def compute_dir(lab) -> Path:
    return next(p for p in (lab.dir / "nodes").iterdir() if p.name.endswith("-compute-1"))


def node_name(lab) -> str:
    return compute_dir(lab).name


class Pause:
    """Make the lab's compute agent stop at one fault point (it runs with
    COWFLEET_FAULT_PAUSE naming the lab's pause file: tests/conftest.py),
    then kill it there and restart it as the lab starts it."""

    def __init__(self, lab, point: str):
        self.lab, self.point = lab, point
        self.file = Path(lab.fault_pause)
        self.marker = Path(f"{self.file}.{point}.{node_name(lab)}")

    def arm(self):
        self.file.write_text(self.point)

    def kill_there_and_restart(self, there=None):
        """``there``: a check of what the point means, made while the agent waits at it."""
        try:
            wait_until(self.marker.exists, 120, f"the agent to reach {self.point}")
            if there is not None:
                there()
            kill_compute(self.lab)
        finally:
            self.file.unlink(missing_ok=True)
            self.marker.unlink(missing_ok=True)
        self.lab.restart("agent-compute")


def leftovers(lab, group: str) -> dict:
    d = compute_dir(lab)
    return {"domains": sorted(x for x in domains(lab) if f"--{group}-" in x),
            "overlays": sorted(p.name for p in (d / "overlays").glob(f"{group}/*")),
            "seeds": sorted(p.name for p in (d / "seeds").glob(f"{group}/*")),
            "consoles": sorted(p.name for p in (d / "consoles").glob(f"{group}-*"))}


def ready(client, group: str, size: int):
    g = client.get_group(group)
    return g if g and g["status"]["phase"] == "ready" and len(g["instances"]) == size else None


@pytest.fixture
def crash_group(client):
    name = "crashpt"
    yield name
    try:
        client.delete_group(name)
    except Exception:
        pass
    wait_until(lambda: client.get_group(name) is None, 120, "the crash group gone")


@pytest.mark.parametrize("point", START_POINTS)
def test_killed_during_a_start(lab, client, image_demo, crash_group, point):
    pause = Pause(lab, point)
    pause.arm()
    client.put_group(crash_group, image="demo", flavor="small", size=1)

    def there():
        if point == "start.allocated":      # taken from the pool, not yet on the record
            assert client.get_group(crash_group)["instances"][0]["address"] is None
        if point == "start.seed-partial":   # the seed under its temporary name only
            seeds = compute_dir(lab) / "seeds" / crash_group
            assert [p.suffix for p in seeds.iterdir()] == [".partial"]
    pause.kill_there_and_restart(there)
    g = wait_until(lambda: ready(client, crash_group, 1), 180, f"the group ready after a kill at {point}")
    inst = g["instances"][0]
    assert leftovers(lab, crash_group)["domains"] == [f"cf-{node_name(lab)}--{inst['id']}"], "exactly one domain"
    assert inst["address"] and inst["mac"]
    import libvirt
    conn = libvirt.open("qemu:///system")
    try:
        state = conn.lookupByName(f"cf-{node_name(lab)}--{inst['id']}").state()[0]
    finally:
        conn.close()
    assert state == libvirt.VIR_DOMAIN_RUNNING, "a domain left paused by the kill was resumed"
    client.delete_group(crash_group)
    wait_until(lambda: client.get_group(crash_group) is None, 120, "the group gone")
    assert leftovers(lab, crash_group) == {"domains": [], "overlays": [], "seeds": [], "consoles": []}


@pytest.mark.parametrize("point", TERMINATE_POINTS)
def test_killed_during_a_terminate(lab, client, image_demo, crash_group, point):
    client.put_group(crash_group, image="demo", flavor="small", size=1)
    g = wait_until(lambda: ready(client, crash_group, 1), 180, "the group ready")
    address = g["instances"][0]["address"]
    pause = Pause(lab, point)
    pause.arm()
    client.delete_group(crash_group)
    pause.kill_there_and_restart()
    wait_until(lambda: client.get_group(crash_group) is None, 120, f"the group gone after a kill at {point}")
    assert leftovers(lab, crash_group) == {"domains": [], "overlays": [], "seeds": [], "consoles": []}
    # no image session left that no overlay on the host uses (another test's
    # instance of the image in the shared lab keeps its session, rightly)
    sessions = SessionManager(compute_dir(lab) / "sessions")

    def unused_sessions():
        used = {sessions.key_of_overlay(p) for p in (compute_dir(lab) / "overlays").glob("*/*.qcow2")}
        return [p.name for p in sessions.root.glob("*") if (p / "session.json").exists() and p.name not in used]
    wait_until(lambda: not unused_sessions(), 30, "no image session left that nothing uses")
    # the address went back to the pool: the next instance gets the lowest free one, this one
    client.put_group(crash_group, image="demo", flavor="small", size=1)
    g = wait_until(lambda: (g := client.get_group(crash_group)) and g["instances"] and
                   g["instances"][0]["address"] and g, 60, "an address for the next instance")
    assert g["instances"][0]["address"] == address
