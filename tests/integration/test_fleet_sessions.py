"""agents/fleet.py --shared-session: the agents of a fleet process share one
ZooKeeper session for their own work, and their placements (the coordinator's
reads, group lock and transactions) go through a second one, as a real
agent's would not queue behind 19 other agents' instance starts. Real
ZooKeeper (the lab's, in a chroot), two compute agents of one rack with the
fake hypervisor, talking over their P2P endpoints."""
from __future__ import annotations

import secrets
import shutil
import threading

import pytest

from cowfleet.agents.compute.agent import ComputeAgent
from cowfleet.agents.compute.hypervisor import FakeHypervisor
from cowfleet.models import DEFAULT_FLAVORS, DeployRequest, Group, GroupStatus, Image
from cowfleet.zk import layout
from cowfleet.zk.connection import connect, read
from cowfleet.zk.groups import guard_version
from tests.conftest import _workdir
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def sessions(lab):
    hosts = lab.state.zk.split("/")[0] + f"/fleet-{secrets.token_hex(3)}"
    made = []

    def make():
        zk = connect(hosts)
        made.append(zk)
        return zk
    yield hosts, make
    admin = made[0]
    for child in admin.get_children("/"):
        admin.delete(f"/{child}", recursive=True)
    for zk in made:
        zk.stop()
        zk.close()


def counting(client, counts: dict, key: str) -> None:
    """Count the transactions begun on ``client``."""
    begin = client.transaction

    def transaction():
        counts[key] += 1
        return begin()
    client.transaction = transaction


def test_fleet_agents_place_through_their_placement_session(sessions):
    hosts, make = sessions
    admin, shared, placing = make(), make(), make()
    counts = {"shared": 0, "placing": 0}
    counting(shared, counts, "shared")
    counting(placing, counts, "placing")
    admin.create(layout.image("img"), Image(name="img", sha256="ab" * 32, size_bytes=1).to_bytes(), makepath=True)
    admin.create(layout.flavor("small"), DEFAULT_FLAVORS[0].to_bytes(), makepath=True)
    for obj in (layout.image("img"), layout.flavor("small")):
        guard_version(admin, obj)         # the guards a placement bumps (cowfleet/zk/groups.py)
    d = _workdir("cowfleet-fleet-sessions-")
    agents, threads = [], []
    try:
        for i in (1, 2):
            agent = ComputeAgent(name=f"r1-n{i}", rack="r1", zk_hosts=hosts, state_dir=str(d / f"n{i}"),
                                 hypervisor=FakeHypervisor(), vcpus=64, memory_mib=65536, network="none",
                                 seeds=False, zk=shared, placement_zk=placing)
            agents.append(agent)
            threads.append(threading.Thread(target=agent.run, daemon=True))
            threads[-1].start()
        assert all(a.placer.zk is placing for a in agents)
        wait_until(lambda: any(a.leading.is_set() for a in agents), 30, "a rack leader")
        # a group as the service writes it, with its request: the leader takes it from the queue
        admin.create(layout.group("g"), Group(name="g", image="img", flavor="small", size=6).to_bytes(),
                     makepath=True)
        admin.create(layout.group_status("g"), GroupStatus().to_bytes())
        admin.ensure_path(layout.group_instances("g"))
        admin.create(layout.REQUEST_PREFIX, DeployRequest(group="g", generation=1).to_bytes(), sequence=True,
                     makepath=True)

        def placed():
            got = read(admin, layout.group_status("g"), GroupStatus)
            return got is not None and got[0].observed_generation >= 1
        wait_until(placed, 60, "the group placed")
        per_node = {a.name: len(admin.get_children(layout.assignments(a.name))) for a in agents}
        assert sum(per_node.values()) == 6 and set(per_node.values()) == {3}     # spread over both
        assert counts["placing"] >= 1       # the commit went through the placement session ...
        assert counts["shared"] == 0        # ... and not through the agents' own
    finally:
        for a in agents:
            a.request_stop()
        for t in threads:
            t.join(30)
        shutil.rmtree(d, ignore_errors=True)
