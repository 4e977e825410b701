"""Placement at scale: a 1,000-instance group on up to 200 agents in 20 racks.

One real ZooKeeper, the real service (gunicorn) and real agents -- each with
its own ZooKeeper session, election, P2P endpoint and assignment cache --
with the fake hypervisor, hosted as threads in a few processes
(cowfleet.agents.fleet). The fleet grows step by step (20, 50, 100, 200
agents, 10 per rack); at each step a group of --instances is PUT and the time
to its committed assignment is taken (from the PUT until its instances are in
ZooKeeper: the commit is one transaction, so they appear at once), with the
coordinator's own trace of the hand-shake. The first step is the baseline
the others are compared with.

    .venv/bin/python bench/placement.py [--instances 1000] [--steps 20,50,100,200] [--json out.json]

Target (issue 4): <= 2 s at 200 agents, racks balanced within +-1.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cowfleet.agents.storage import tgt  # noqa: E402
from cowfleet.client import Client  # noqa: E402
from cowfleet.lab import components as c  # noqa: E402
from cowfleet.zk import layout  # noqa: E402
from cowfleet.zk.connection import connect  # noqa: E402

NODES_PER_RACK = 10
RACKS_PER_PROCESS = 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--steps", default="20,50,100,200", help="fleet sizes (agents), multiples of 10")
    p.add_argument("--repeat", type=int, default=3, help="placements per step (the median is shown)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    if any(s % NODES_PER_RACK for s in steps):
        p.error(f"fleet sizes must be multiples of {NODES_PER_RACK}")

    d = Path(tempfile.mkdtemp(prefix="cowfleet-bench-placement-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    zk_server = c.ZooKeeperServer(d / "zk")
    procs: list[int] = []
    rows = []
    storage = f"storage-{secrets.token_hex(3)}"     # its own name: this machine's tgtd is shared
    started_tgtd = None
    try:
        started_tgtd = c.ensure_tgtd(d / "tgtd.log")   # the storage agent exports through it
        zk_server.start()
        hosts = zk_server.hosts + "/bench"
        token = secrets.token_urlsafe(16)
        (d / "tokens").write_text(f"{token} admin\n")
        port = c.free_port()
        procs.append(c.start_service(d, port, hosts, d / "tokens", workers=2).pid)
        client = Client(f"http://127.0.0.1:{port}", token)
        master = d / "tiny.raw"
        master.write_bytes(b"\0" * 4096)
        procs.append(c.spawn(c.python_cmd("cowfleet.agents.main", "--role", "storage", "--rack", "r00",
                                          "--zk", hosts, "--name", storage, "--state-dir",
                                          str(d / storage)), d / "storage.log").pid)
        client.put_image("tiny", source_url=f"file://{master}", format="raw", min_replicas=1)
        c.wait_for(lambda: client.get_image("tiny")["status"] == "available", 60, "image available")
        zk = connect(hosts)
        racks_up = 0
        for agents in steps:
            racks_up = _grow(d, hosts, procs, racks_up, agents // NODES_PER_RACK, client)
            samples = [_place_once(client, zk, args.instances, f"g{agents}-{i}") for i in range(args.repeat)]
            row = _summarise(agents, samples)
            rows.append(row)
            _print_row(row, rows[0], header=len(rows) == 1)
        zk.stop()
        zk.close()
    finally:
        for pid in reversed(procs):
            c.stop_pid(pid, timeout=20)
        if tgt.available():
            tgt.remove_node_targets(storage)
        if started_tgtd:
            c.release_tgtd(started_tgtd)
        zk_server.stop()
        shutil.rmtree(d, ignore_errors=True)
    last = rows[-1]
    ok = last["commit_s"] <= 2.0 and last["rack_spread"] <= 1 and last["placed"] == args.instances
    print(f"\ntarget at {last['agents']} agents: commit <= 2 s and racks within +-1 -> "
          f"{'PASS' if ok else 'FAIL'} ({last['commit_s']:.2f} s, racks {last['rack_min']}..{last['rack_max']})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if ok else 1


def _grow(d: Path, hosts: str, procs: list[int], racks_up: int, racks_wanted: int, client: Client) -> int:
    """Start fleet processes until ``racks_wanted`` racks of agents run."""
    t0 = time.monotonic()
    while racks_up < racks_wanted:
        n = min(RACKS_PER_PROCESS, racks_wanted - racks_up)
        racks = ",".join(f"r{r + 1:02d}" for r in range(racks_up, racks_up + n))
        procs.append(c.spawn(c.python_cmd("cowfleet.agents.fleet", "--zk", hosts, "--racks", racks,
                                          "--nodes-per-rack", str(NODES_PER_RACK),
                                          "--state-dir", str(d / "fleet")),
                             d / f"fleet-{racks_up:02d}.log").pid)
        racks_up += n
    want = racks_wanted * NODES_PER_RACK

    def ready():
        nodes = [n for n in client.request("GET", "/v1/nodes?limit=1000").json() if n["role"] == "compute"]
        leaders = {n["rack"] for n in nodes if n["leader"]}
        return len(nodes) == want and len(leaders) == racks_wanted
    c.wait_for(ready, 300, f"{want} agents registered with a leader in each of {racks_wanted} racks",
               interval=0.5)
    print(f"  ({want} agents up after {time.monotonic() - t0:.1f}s)", file=sys.stderr)
    return racks_up


def _place_once(client: Client, zk, size: int, name: str) -> dict:
    t0 = time.monotonic()
    client.put_group(name, image="tiny", flavor="small", size=size, placement={"strategy": "spread"})
    put_s = time.monotonic() - t0
    path = layout.group_instances(name)
    while True:
        n = len(zk.get_children(path))
        if n:
            break
        if time.monotonic() - t0 > 120:
            raise TimeoutError(f"group {name}: nothing placed after 120 s")
        time.sleep(0.005)
    commit_s = time.monotonic() - t0
    group = client.get_group(name)
    # the trace is written just after the commit
    trace = c.wait_for(lambda: client.request("GET", f"/v1/instance-groups/{name}/placement").json(), 30,
                       f"the placement trace of {name}")
    per_rack = Counter(i["rack"] for i in group["instances"])
    per_node = Counter(i["node"] for i in group["instances"])
    client.delete_group(name)
    c.wait_for(lambda: client.get_group(name) is None, 300, f"group {name} deleted", interval=0.2)
    return {"put_s": put_s, "commit_s": commit_s, "placed": n, "per_rack": per_rack, "per_node": per_node,
            "trace": trace}


def _summarise(agents: int, samples: list[dict]) -> dict:
    best = sorted(samples, key=lambda s: s["commit_s"])[len(samples) // 2]   # the median sample
    racks = best["per_rack"]
    nodes = best["per_node"]
    t = best["trace"]
    return {"agents": agents, "racks": agents // NODES_PER_RACK,
            "commit_s": statistics.median(s["commit_s"] for s in samples),
            "commit_min_s": min(s["commit_s"] for s in samples),
            "put_ms": statistics.median(s["put_s"] for s in samples) * 1000,
            "offers_ms": t.get("offers_ms"), "tx_ms": t.get("commit_ms"), "via": t.get("via"),
            "attempts": t.get("attempts"), "placed": best["placed"],
            "rack_min": min(racks.values()), "rack_max": max(racks.values()),
            "rack_spread": max(racks.values()) - min(racks.values()),
            "node_min": min(nodes.values()), "node_max": max(nodes.values())}


def _print_row(row: dict, base: dict, header: bool) -> None:
    if header:
        print(f"{'agents':>6} {'racks':>5} {'commit s':>9} {'x base':>7} {'PUT ms':>7} {'offers ms':>9} "
              f"{'tx ms':>6} {'via':>8} {'placed':>6} {'per rack':>9} {'per node':>9}")
    print(f"{row['agents']:>6} {row['racks']:>5} {row['commit_s']:>9.2f} {row['commit_s'] / base['commit_s']:>7.2f} "
          f"{row['put_ms']:>7.0f} {row['offers_ms']:>9.0f} {row['tx_ms']:>6.0f} {row['via']:>8} "
          f"{row['placed']:>6} {row['rack_min']:>4}..{row['rack_max']:<4} {row['node_min']:>4}..{row['node_max']:<4}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
