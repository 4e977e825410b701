"""CPU a kazoo client spends per ZooKeeper operation: kazoo's own threading
handler (the baseline) against cowfleet's ``PollHandler`` (cowfleet/zk/handler.py),
in the same run against one real ZooKeeper.

What is timed is the client process's CPU (``time.process_time``: all its
threads, kazoo's connection and callback threads included), not the wall
clock: on the agents' two shared cores every client's CPU is what the others
wait for. Each operation is run ``--ops`` times per round, the handlers
interleaved round after round (``--repeat``); the table shows the medians
in microseconds per operation and the ratio to the baseline.

- ``get``: one synchronous read of a 200-byte znode at a time;
- ``get_async x N``: N reads sent at once, then every answer waited for
  (how the agents read a group's instances);
- ``set``: one synchronous write;
- ``multi``: a transaction of 50 creates and their deletes' transaction
  (per create and delete).

    .venv/bin/python bench/zk_client.py [--ops 2000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kazoo.client import KazooClient  # noqa: E402

from bench.cleanup import teardown  # noqa: E402
from cowfleet.lab import components as c  # noqa: E402
from cowfleet.zk.handler import PollHandler  # noqa: E402

HANDLERS = {"kazoo's handler": lambda: None, "PollHandler": PollHandler}
DATA = b"x" * 200


def op_get(zk, n: int) -> int:
    for _ in range(n):
        zk.get("/bench/z")
    return n


def op_get_async(zk, n: int) -> int:
    for res in [zk.get_async("/bench/z") for _ in range(n)]:
        res.get()
    return n


def op_set(zk, n: int) -> int:
    for _ in range(n):
        zk.set("/bench/z", DATA)
    return n


def op_multi(zk, n: int) -> int:
    done = 0
    for _ in range(max(1, n // 100)):
        tx = zk.transaction()
        for i in range(50):
            tx.create(f"/bench/m/{i}", DATA)
        assert all(r is not None and not isinstance(r, Exception) for r in tx.commit())
        tx = zk.transaction()
        for i in range(50):
            tx.delete(f"/bench/m/{i}")
        tx.commit()
        done += 100
    return done


OPS = {"get": op_get, "get_async x N": op_get_async, "set": op_set, "multi": op_multi}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=2000, help="operations per handler and round")
    p.add_argument("--repeat", type=int, default=5, help="rounds (the median is shown)")
    args = p.parse_args(argv)
    with teardown() as stack:
        d = Path(tempfile.mkdtemp(prefix="cowfleet-bench-zkclient-", dir="/var/tmp"))
        stack.callback(shutil.rmtree, d, ignore_errors=True)
        server = c.ZooKeeperServer(d / "zk")
        stack.callback(server.stop)
        server.start()
        clients = {}
        for name, make in HANDLERS.items():
            zk = KazooClient(hosts=server.hosts, handler=make())
            zk.start(15)
            stack.callback(zk.close)
            stack.callback(zk.stop)
            clients[name] = zk
        first = next(iter(clients.values()))
        first.ensure_path("/bench/m")
        first.create("/bench/z", DATA)
        for zk in clients.values():                  # warm: connections, caches, code paths
            for fn in OPS.values():
                fn(zk, 200)
        us = {(o, h): [] for o in OPS for h in clients}
        for _ in range(args.repeat):
            for op, fn in OPS.items():
                for name, zk in clients.items():     # interleaved: the machine's load hits both alike
                    t0 = time.process_time()
                    n = fn(zk, args.ops)
                    us[(op, name)].append((time.process_time() - t0) / n * 1e6)
        base = next(iter(clients))
        print(f"{'operation':<16}" + "".join(f"{h + ' us':>20}" for h in clients) + "   ratio to " + base)
        for op in OPS:
            med = {h: statistics.median(us[(op, h)]) for h in clients}
            print(f"{op:<16}" + "".join(f"{m:>20.0f}" for m in med.values()) + "   "
                  + ", ".join(f"{h} {m / med[base]:.2f}" for h, m in med.items() if h != base), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
