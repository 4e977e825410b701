"""Reading every rack's leader: cowfleet.zk.leaders.rack_leaders (what each
placement request and each image locate does) against kazoo's recipe.

One real ZooKeeper; R racks of K contenders each, their lock znodes made as
kazoo's Election makes them (``<uuid>__lock__<seq>``, the node name as data)
and a membership record per node. Each way is timed --repeat times per size,
all in the same run; the table shows the medians and the ratio to the
baseline, the recipe read in parallel (a thread per rack, up to 16):

- ``recipe, serial``: ``Election(zk, path).contenders()[0]`` rack after rack,
  then the leader's record (the plainest use of the recipe);
- ``recipe, threads``: the same, the racks on a thread pool, the records
  read asynchronously;
- ``rack_leaders``: what the agents run (cowfleet/zk/leaders.py).

    .venv/bin/python bench/leaders.py [--racks 5,20,100] [--contenders 10] [--repeat 30]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kazoo.exceptions import NoNodeError  # noqa: E402

from cowfleet.lab import components as c  # noqa: E402
from cowfleet.models import NodeInfo  # noqa: E402
from cowfleet.zk import layout  # noqa: E402
from cowfleet.zk.connection import connect  # noqa: E402
from cowfleet.zk.leaders import rack_leader_name, rack_leaders  # noqa: E402

ROLE = "compute"
POOL = ThreadPoolExecutor(max_workers=16)


def _record(zk, name: str | None):
    if not name:
        return None
    try:
        node = NodeInfo.from_bytes(zk.get(layout.node(name))[0])
    except NoNodeError:
        return None
    return node if node.role == ROLE and node.address else None


def recipe_serial(zk, role: str) -> dict[str, NodeInfo]:
    out = {}
    for rack in sorted(zk.get_children(layout.RACKS)):
        node = _record(zk, rack_leader_name(zk, rack, role))
        if node:
            out[rack] = node
    return out


def recipe_threads(zk, role: str) -> dict[str, NodeInfo]:
    racks = sorted(zk.get_children(layout.RACKS))
    names = list(POOL.map(lambda r: rack_leader_name(zk, r, role), racks))
    reads = [(r, zk.get_async(layout.node(n))) for r, n in zip(racks, names) if n]
    out = {}
    for rack, res in reads:
        try:
            node = NodeInfo.from_bytes(res.get()[0])
        except NoNodeError:
            continue
        if node.role == role and node.address:
            out[rack] = node
    return out


WAYS = {"recipe, threads": recipe_threads, "recipe, serial": recipe_serial, "rack_leaders": rack_leaders}


def _populate(zk, first: int, last: int, contenders: int) -> None:
    for r in range(first, last):
        rack = f"r{r:03d}"
        path = layout.rack_leader(rack, ROLE)
        zk.ensure_path(path)
        for i in range(contenders):
            name = f"{rack}-n{i:02d}"
            info = NodeInfo(name=name, role=ROLE, rack=rack, address=f"http://127.0.0.1:1/{name}")
            zk.create(layout.node(name), info.to_bytes(), makepath=True)
            zk.create(f"{path}/{uuid.uuid4().hex}__lock__", name.encode(), sequence=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--racks", default="5,20,100", help="fleet sizes in racks, growing")
    p.add_argument("--contenders", type=int, default=10, help="nodes per rack (all contend)")
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args(argv)
    d = Path(tempfile.mkdtemp(prefix="cowfleet-bench-leaders-", dir="/var/tmp"))
    server = c.ZooKeeperServer(d / "zk")
    try:
        server.start()
        zk = connect(server.hosts + "/bench")
        print(f"{'racks':>5} " + " ".join(f"{w + ' ms':>18}" for w in WAYS) + "   ratio to recipe, threads")
        made = 0
        for racks in (int(x) for x in args.racks.split(",")):
            _populate(zk, made, racks, args.contenders)
            made = racks
            times = {w: [] for w in WAYS}
            want = {f"r{r:03d}": f"r{r:03d}-n00" for r in range(racks)}
            for _ in range(args.repeat):
                for way, fn in WAYS.items():      # interleaved: load on the machine hits all alike
                    t0 = time.perf_counter()
                    got = fn(zk, ROLE)
                    times[way].append(time.perf_counter() - t0)
                    assert {r: n.name for r, n in got.items()} == want, way
            med = {w: statistics.median(t) * 1000 for w, t in times.items()}
            base = med["recipe, threads"]
            print(f"{racks:>5} " + " ".join(f"{m:>18.1f}" for m in med.values()) + "   "
                  + ", ".join(f"{w} {m / base:.2f}" for w, m in med.items()), flush=True)
        zk.stop()
        zk.close()
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
