"""API latency and throughput under concurrent clients, on loopback.

Starts a real ZooKeeper and the real service (gunicorn, ``--workers`` 4,
gthread, as the lab runs it; no agents), seeds a few objects, then drives
each request kind with an open-loop load generator: requests are scheduled at
a fixed rate and latency is measured from the *scheduled* send time, so a
slow server (or a busy generator) shows up as latency instead of quietly
lowering the rate (no coordinated omission). A last, closed-loop step sends
back to back from ``--threads`` clients to find the maximum throughput.

The baseline, measured in the same run and step by step interleaved with the
others, is ``GET /healthz``: no auth, no schema, one ZooKeeper round trip.
Ratios to it say what the API itself costs on a noisy machine.

    .venv/bin/python bench/api.py                       # about 90 s
    .venv/bin/python bench/api.py --rates 50,200 --duration 2 --json out.json
    .venv/bin/python bench/api.py --rates 200 --compare /path/to/base/.venv/bin/python

``--compare PYTHON`` runs a second service (and its own ZooKeeper) from
another checkout's interpreter -- a venv with that checkout installed, e.g.
the commit before a change -- and every step on it first, then on this
tree's: before and after in the same run, on the same machine load.

Prints a table and a verdict line against the target (p99 <= 50 ms at
200 req/s with 4 workers). Everything it starts and writes (processes, a
folder under /var/tmp) is removed at the end, on Ctrl-C too.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # bench.cleanup
from bench.cleanup import unwind_on_signals  # noqa: E402

from cowfleet import procs
from cowfleet.lab import components as c

TARGET_RATE, TARGET_P99_MS = 200, 50.0
TOKEN = "bench-admin-token"
N_GROUPS = 10


@dataclass
class Kind:
    """One kind of request: ``body(i)`` gives the i-th request's body."""
    name: str
    method: str
    path: str
    ok: tuple[int, ...] = (200,)
    body: object = None          # callable(i) -> bytes, or None
    auth: bool = True


def _flavor(memory_mib: int) -> bytes:
    return json.dumps({"vcpus": 1, "memory_mib": memory_mib, "disk_gib": 1}).encode()


KINDS = [  # the group list last: it overloads the service first, and a backlog would skew the next step
    Kind("baseline GET /healthz", "GET", "/healthz", auth=False),
    Kind("GET group", "GET", "/v1/instance-groups/bench-0"),
    Kind("GET flavor list (5)", "GET", "/v1/flavors"),
    # alternating specs: every request really writes (a new znode version)
    Kind("PUT flavor (changes)", "PUT", "/v1/flavors/bench-flip", (200, 201),
         body=lambda i: _flavor(128 if i % 2 else 256)),
    Kind("PUT flavor (same spec)", "PUT", "/v1/flavors/bench-same", (200, 201),
         body=lambda i: _flavor(128)),
    Kind(f"GET group list ({N_GROUPS})", "GET", "/v1/instance-groups"),
]


@dataclass
class Step:
    kind: str
    server: str                  # "this" tree, or "base" (--compare)
    mode: str                    # "open" at rate, or "closed" (max throughput)
    rate: float | None
    duration: float
    sent: int = 0
    errors: int = 0
    late: int = 0                # sent > 5 ms after its scheduled time (generator or pool lag)
    dropped: int = 0             # never sent: the step ran out of its time bound
    achieved: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    client_cpu_pct: float = 0.0  # this process, % of one core
    server_cpu_ms_per_req: float = 0.0  # gunicorn + ZooKeeper CPU per request
    first_error: str = ""
    latencies: list[float] = field(default_factory=list, repr=False)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


class Server:
    """ZooKeeper + the service under gunicorn, in a folder under /var/tmp."""

    def __init__(self, workers: int, python: str | None = None, label: str = "this"):
        self.workers, self.python, self.label = workers, python, label
        self.dir = Path(tempfile.mkdtemp(prefix="cowfleet-bench-", dir="/var/tmp"))
        self.zk = c.ZooKeeperServer(self.dir / "zookeeper")
        self.port = c.free_port()
        self.service_pid: int | None = None

    def start(self) -> None:
        self.zk.start()
        tokens = self.dir / "tokens"
        tokens.write_text(f"{TOKEN} admin\n")
        metrics = self.dir / "metrics"
        metrics.mkdir()
        env = dict(os.environ, COWFLEET_ZK=self.zk.hosts + "/cowfleet-bench",
                   COWFLEET_TOKENS_FILE=str(tokens), PROMETHEUS_MULTIPROC_DIR=str(metrics))
        log = self.dir / "service.log"
        cmd = c.python_cmd("gunicorn", "--config", "python:cowfleet.service.gunicorn_conf",
                           "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
                           "--access-logfile", str(self.dir / "access.log"),
                           "cowfleet.service:create_app()")
        if self.python:
            cmd[0] = self.python
        proc = c.spawn(cmd, log, env=env)
        self.service_pid = proc.pid
        c.wait_for(lambda: _get_status(self.port, "/healthz") == 200, 60, "the service's /healthz",
                   proc=proc, log=log)

    def pids(self) -> list[int]:
        """ZooKeeper, the gunicorn master and its workers."""
        out = [p for p in (self.zk.pid, self.service_pid) if p]
        out += [int(e) for e in os.listdir("/proc") if e.isdigit() and procs.parent_pid(int(e)) == self.service_pid]
        return out

    def cpu_seconds(self) -> float:
        return sum(procs.cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        # every step, even when one before it fails (last registered, first run)
        with contextlib.ExitStack() as steps:
            steps.callback(shutil.rmtree, self.dir, ignore_errors=True)
            steps.callback(self.zk.stop)
            if self.service_pid:
                steps.callback(c.stop_pid, self.service_pid)       # its process group: the workers too
                self.service_pid = None


def _get_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


class Client:
    """One keep-alive connection; reconnects after an error."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def send(self, kind: Kind, i: int) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {TOKEN}"} if kind.auth else {}
        body = kind.body(i) if kind.body else None
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.conn.request(kind.method, kind.path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
            if resp.status not in kind.ok:
                return resp.status, data[:200].decode(errors="replace")
            return resp.status, ""
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return 0, f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_step(server: Server, clients: list[Client], kind: Kind, rate: float | None,
             duration: float) -> Step:
    """Open loop at ``rate`` (requests scheduled at t0 + i/rate, latency from
    the schedule), or closed loop (rate None: every client back to back)."""
    step = Step(kind.name, server.label, "open" if rate else "closed", rate, duration)
    total = int(rate * duration) if rate else None
    counter = itertools.count()          # next() on it is atomic under the GIL
    lock = threading.Lock()
    results: list[tuple[float, int, str, bool]] = []
    t0 = time.monotonic() + 0.05
    deadline = t0 + duration
    # an overloaded open-loop step would otherwise run until its backlog drains
    give_up = t0 + 2 * duration + 2

    def work(client: Client):
        mine = []
        while True:
            i = next(counter)
            if total is not None:
                if i >= total:
                    break
                scheduled = t0 + i / rate
                if time.monotonic() > give_up:
                    continue             # dropped: counted below
                delay = scheduled - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            else:
                scheduled = time.monotonic()
                if scheduled >= deadline:
                    break
            started = time.monotonic()
            status, error = client.send(kind, i)
            mine.append((time.monotonic() - scheduled, status, error, started - scheduled > 0.005))
        with lock:
            results.extend(mine)

    cpu0, srv0 = resource.getrusage(resource.RUSAGE_SELF), server.cpu_seconds()
    threads = [threading.Thread(target=work, args=(cl,), daemon=True) for cl in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(time.monotonic() - t0, 1e-9)
    cpu1, srv1 = resource.getrusage(resource.RUSAGE_SELF), server.cpu_seconds()

    step.sent = len(results)
    step.dropped = total - step.sent if total is not None else 0
    step.latencies = [r[0] * 1000 for r in results]
    step.errors = sum(1 for r in results if r[2]) + step.dropped
    step.first_error = next((f"{r[1]} {r[2]}" for r in results if r[2]),
                            f"{step.dropped} never sent (step time bound)" if step.dropped else "")
    step.late = sum(1 for r in results if r[3])
    step.achieved = step.sent / max(wall, duration)   # over the step's window at least
    step.p50_ms, step.p99_ms = percentile(step.latencies, 0.50), percentile(step.latencies, 0.99)
    step.max_ms = max(step.latencies, default=float("nan"))
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    step.client_cpu_pct = 100 * client_cpu / wall
    step.server_cpu_ms_per_req = 1000 * (srv1 - srv0) / max(step.sent, 1)
    return step


def seed(port: int) -> None:
    """An image, N_GROUPS groups (their deploy requests stay queued: no agents)."""
    cl = Client(port)
    put = Kind("seed", "PUT", "", (200, 201))
    for path, body in [("/v1/images/bench", {"format": "raw", "min_replicas": 1})] + [
            (f"/v1/instance-groups/bench-{i}", {"image": "bench", "flavor": "small", "size": 3,
                                                "labels": {"bench": "yes"}}) for i in range(N_GROUPS)]:
        put.path, put.body = path, (lambda _i, b=body: json.dumps(b).encode())
        status, error = cl.send(put, 0)
        if error:
            raise c.LabError(f"seeding {path}: {status} {error}")
    cl.close()


def print_table(steps: list[Step]) -> None:
    base = {(s.server, s.mode, s.rate): s for s in steps if s.kind == KINDS[0].name}
    head = (f"{'request':<26} {'server':>6} {'rate':>6} {'sent':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'max ms':>7} {'err':>4} {'drop':>5} {'late':>5} {'p50/base':>8} "
            f"{'srv cpu ms/req':>14} {'gen cpu':>7}")
    print(head)
    print("-" * len(head))
    for s in steps:
        b = base.get((s.server, s.mode, s.rate))
        ratio = f"{s.p50_ms / b.p50_ms:.1f}x" if b and b.p50_ms else "-"
        rate = f"{s.rate:g}" if s.rate else "max"
        print(f"{s.kind:<26} {s.server:>6} {rate:>6} {s.sent:>6} {s.achieved:>7.0f} {s.p50_ms:>7.1f} {s.p99_ms:>7.1f} "
              f"{s.max_ms:>7.1f} {s.errors:>4} {s.dropped:>5} {s.late:>5} {ratio:>8} "
              f"{s.server_cpu_ms_per_req:>14.1f} {s.client_cpu_pct:>6.0f}%")
    for s in steps:
        if s.errors:
            print(f"  first error of {s.kind} ({s.server}) at {s.rate or 'max'}: {s.first_error}")


def verdict(steps: list[Step], rate: float) -> tuple[bool, list[str]]:
    """PASS if every request kind (the baseline aside) meets the target at
    ``rate`` on this tree's service."""
    at = [s for s in steps if s.rate == rate and s.kind != KINDS[0].name and s.server == "this"]
    if not at:
        return False, [f"no step at {rate:g} req/s: no verdict"]
    lines, ok = [], True
    for s in at:
        good = s.p99_ms <= TARGET_P99_MS and not s.errors and s.achieved >= 0.95 * rate
        ok &= good
        lines.append(f"  {'pass' if good else 'FAIL'}  {s.kind:<26} p99 {s.p99_ms:7.1f} ms, "
                     f"{s.achieved:.0f} req/s, {s.errors} errors")
    head = (f"{'PASS' if ok else 'FAIL'}: target p99 <= {TARGET_P99_MS:g} ms at {rate:g} req/s "
            f"with no errors, for every request kind")
    return ok, [head] + lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="50,100,200", help="open-loop rates, req/s (default 50,100,200)")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per step (0.5 to 30; default 3)")
    ap.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    ap.add_argument("--threads", type=int, default=16,
                    help="client threads, one keep-alive connection each (1 to 64; default 16)")
    ap.add_argument("--no-max", action="store_true", help="skip the closed-loop max-throughput step")
    ap.add_argument("--json", metavar="FILE", help="also write the steps as JSON")
    ap.add_argument("--compare", metavar="PYTHON",
                    help="also run another checkout's service (this interpreter's), every step on it "
                         "first: before and after in the same run")
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="seconds of each kind at 100 req/s before measuring (default 1; ZooKeeper's "
                         "JIT compiles its write path over the first ~1,000 writes: 3 is steadier)")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not 0.5 <= args.duration <= 30 or not 0.5 <= args.warmup <= 30 or not 1 <= args.threads <= 64 or \
            not all(0 < r <= 5000 for r in rates) or not 1 <= args.workers <= 16:
        ap.error("out of bounds: --duration and --warmup 0.5..30, --threads 1..64, --workers 1..16, rates 0..5000")

    unwind_on_signals()   # SIGTERM, SIGHUP, SIGINT: the finally below runs

    servers = ([Server(args.workers, args.compare, "base")] if args.compare else []) + [Server(args.workers)]
    clients: dict[str, list[Client]] = {}
    try:
        for server in servers:
            print(f"starting ZooKeeper and the service ({server.label}, {args.workers} workers) ...", flush=True)
            server.start()
            seed(server.port)
            clients[server.label] = [Client(server.port) for _ in range(args.threads)]
            for kind in KINDS:               # warm up: connections, worker ZooKeeper sessions, the JIT
                run_step(server, clients[server.label], kind, 100, args.warmup)
        load = os.getloadavg()[0]
        steps: list[Step] = []
        plan = [(r, kind) for r in rates for kind in KINDS]
        if not args.no_max:
            plan += [(None, kind) for kind in KINDS]
        loads = []
        for rate, kind in plan:
            for server in servers:
                time.sleep(0.5)              # let the previous step's tail settle
                loads.append(os.getloadavg()[0])
                steps.append(run_step(server, clients[server.label], kind, rate, args.duration))
                print(f"  {kind.name} ({server.label}) at {rate or 'max'}: p99 {steps[-1].p99_ms:.1f} ms",
                      file=sys.stderr, flush=True)
        print(f"\n{os.cpu_count()} CPUs, load average before the run {load:.2f} (during it "
              f"{min(loads):.1f}-{max(loads):.1f}), {args.workers} gunicorn workers x 4 threads, "
              f"{args.threads} client threads, {args.duration:g} s per step; latency from the scheduled "
              f"send time{'; base: ' + args.compare if args.compare else ''}\n")
        print_table(steps)
        ok, lines = verdict(steps, TARGET_RATE if TARGET_RATE in rates else max(rates))
        print("\n" + "\n".join(lines))
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"cpus": os.cpu_count(), "load_before": load, "load_during": [min(loads), max(loads)],
                 "compare": args.compare, "workers": args.workers,
                 "threads": args.threads, "duration": args.duration, "verdict": lines,
                 "steps": [{k: v for k, v in asdict(s).items() if k != "latencies"} for s in steps]},
                indent=2))
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for group in clients.values():
            for cl in group:
                cl.close()
        for server in servers:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
