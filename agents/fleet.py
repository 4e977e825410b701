"""Many compute agents in one process, for scale tests of the control plane.

Each is a full ComputeAgent -- its own ZooKeeper session, membership,
election, P2P endpoint and assignment cache -- with the fake hypervisor,
so one machine can host hundreds (bench/placement.py). Threads, not
processes: 200 Python processes would cost gigabytes and minutes to start.

``--shared-session``: the process's agents share one ZooKeeper session
(their own membership, election contenders, watches and P2P endpoints
still, on one connection). An idle fake agent costs 0.11 % of a core here,
most of it kazoo's connection loop (its pings and select): 1,000 agents
with a session each need about a core while doing nothing, which 2 cores
cannot give with ZooKeeper and a placement on top (bench/README.md). Their
placements -- a coordinator's reads, group lock and transactions -- go
through a second session of the process: on the shared one, the 22
transactions of a 10,000-instance placement queued behind the instance
starts of the 20 agents (each a dozen requests), which a real agent, with a
session and a host of its own, never meets (bench/README.md, session 19).

    python -m cowfleet.agents.fleet --zk HOSTS --racks r01,r02 --nodes-per-rack 10 --state-dir D
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from cowfleet.agents.compute.agent import ComputeAgent
from cowfleet.agents.compute.hypervisor import FakeHypervisor
from cowfleet.agents.node import SESSION_SECONDS
from cowfleet.zk.connection import connect


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cowfleet-fleet", description=__doc__.splitlines()[0])
    p.add_argument("--zk", required=True)
    p.add_argument("--racks", required=True, help="comma-separated rack names")
    p.add_argument("--nodes-per-rack", type=int, default=10)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--vcpus", type=int, default=64)
    p.add_argument("--memory-mib", type=int, default=65536)
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--session-seconds", type=float, default=SESSION_SECONDS,
                   help="each agent's ZooKeeper session timeout (default %(default)s, as real agents). "
                        "1,000 agents on 2 cores miss their heartbeats: 945 of 1,000 registered at best, "
                        "691 two minutes later, with 6 s (bench/README.md)")
    p.add_argument("--shared-session", action="store_true",
                   help="one ZooKeeper session for all of the process's agents (see above)")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kazoo").setLevel(logging.ERROR)

    shared = connect(args.zk, timeout=args.session_seconds) if args.shared_session else None
    placing = connect(args.zk, timeout=args.session_seconds) if args.shared_session else None

    def make(rack: str, i: int) -> ComputeAgent:
        name = f"{rack}-n{i:02d}"
        return ComputeAgent(name=name, rack=rack, zk_hosts=args.zk, state_dir=f"{args.state_dir}/{name}",
                            hypervisor=FakeHypervisor(), vcpus=args.vcpus, memory_mib=args.memory_mib,
                            workers=2, session_seconds=args.session_seconds, zk=shared,
                            placement_zk=placing)
    specs = [(r, i) for r in args.racks.split(",") for i in range(1, args.nodes_per_rack + 1)]
    with ThreadPoolExecutor(8) as pool:           # sessions open in parallel
        agents = list(pool.map(lambda s: make(*s), specs))
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()
        for a in agents:
            a.request_stop()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=a.run, name=a.name, daemon=True) for a in agents]
    for t in threads:
        t.start()
    print(f"fleet of {len(agents)} agents running", flush=True)
    stop.wait()
    for t in threads:
        t.join(10)
    for client in (shared, placing):
        if client is not None:
            client.stop()
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
