"""The fault campaign (issue 16, item 1): random operations while random
components die by SIGKILL, on the racks lab with the fake hypervisor (3
ZooKeeper members, 2 racks x (1 storage + 2 compute) by default).

Each cycle: a few random operations (create, scale, change the image of,
delete a group; upload an image, delete one no group uses) run in a thread
while, at a random moment, one component is killed -9: a compute agent, a
storage agent, one gunicorn worker (its master forks another), the gunicorn
master (with its workers), or one ZooKeeper member. It is restarted the way
the provisioning scripts start it (the node's ROLE.run file: the same command
line), except a worker, which the master replaces. Then a quiet period: wait
until every group is what its spec says, and check the invariants:

- every group converges: exactly ``size`` instances, all ready, all of the
  spec's image, on registered nodes; a deleted group is gone;
- no duplicate instance id; no leaked assignment (an assignment znode with
  no instance record, or an instance record whose node holds no assignment);
  on each compute node exactly one overlay and one seed per instance it
  holds; on each storage node no copy of an image that is gone, no partial
  copy;
- no lost or stuck request (the request queue empties, within 30 s);
- no leaked reservation (every compute agent's ``cowfleet_agent_reservations``
  falls to 0 within 30 s: an offer expires after 10 s), no leaked image
  session (a compute node's sessions at most the images its instances use);
- the API never answered a 5xx other than 503, and a 503 only while a
  ZooKeeper member, the service or a storage agent (an upload through it)
  was down.

With ``--real`` the lab runs real VMs (libvirt, qemu, tgtd; the groups use
the demo guest, fewer and smaller) and three more components die: a storage
node's tgtd (restarted as the lab starts it), a compute node's
qemu-storage-daemon (an image session: the agent re-makes it) and a guest's
qemu (the agent starts the instance again); and one more invariant: each
compute node's libvirt domains are exactly its instances. In the fake lab
those three are kept in memory by the fake exporter and hypervisor.
Prints a table: faults by kind, operations, violations, time to converge
(p50/p99). Exit status 1 if any invariant was violated.

    .venv/bin/python bench/chaos.py [--cycles 200] [--seed N] [--racks 2] [--real] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import libvirt
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cowfleet.client import ApiError, Client  # noqa: E402
from cowfleet.guest.builder import build_demo_image  # noqa: E402
from cowfleet.lab.racks import RacksLab  # noqa: E402

FAULTS = ("compute-agent", "storage-agent", "gunicorn-worker", "gunicorn-master", "zookeeper-member")
REAL_FAULTS = FAULTS + ("tgtd", "qemu-storage-daemon", "guest-qemu")
OPS = ("create-group", "scale-group", "change-image", "delete-group", "upload-image", "delete-image")
IMAGES = ("chaos-a", "chaos-b")          # registered once, with a source_url; groups use them
MAX_GROUPS = 4
MAX_SIZE = 4
CONVERGE_TIMEOUT = 180.0
# real VMs: TCG guests on a small host (each boot 10-30 s), so fewer and smaller groups
REAL_MAX_GROUPS, REAL_MAX_SIZE, REAL_CONVERGE_TIMEOUT = 2, 2, 420.0
REQUEST_GRACE = 30.0


class Recorder:
    """Every API answer of the campaign, by status; 5xx kept with when they came."""

    def __init__(self):
        self.statuses: Counter = Counter()
        self.errors: list[tuple[float, str, int, str]] = []
        self.lock = threading.Lock()

    def call(self, what: str, fn, *args, **kw):
        """``fn`` until it is answered, as a user (or Terraform) would retry:
        no answer (599: the service down) and 503 are tried again, every
        answer recorded. Every operation is idempotent (PUT, merge PATCH, DELETE)."""
        for attempt in range(60):
            try:
                out = fn(*args, **kw)
                status = 200
                detail = ""
            except ApiError as exc:
                out, status, detail = None, exc.status, str(exc)[:300]
            except requests.RequestException as exc:
                out, status = None, 599           # no answer at all (the proxy or service was down)
                detail = type(exc).__name__
            with self.lock:
                self.statuses[status] += 1
                if status >= 500:
                    self.errors.append((time.monotonic(), what, status, detail))
            if status not in (503, 599):
                return out
            time.sleep(min(2.0, 0.2 * 2 ** attempt))
        return None


class Campaign:
    def __init__(self, lab: RacksLab, seed: int, workdir: Path, demo_image: Path | None = None):
        self.lab, self.dir = lab, workdir
        self.demo_image = demo_image          # real VMs: the campaign's images boot the demo guest
        self.real = demo_image is not None
        self.fault_kinds = REAL_FAULTS if self.real else FAULTS
        self.max_groups, self.max_size = (REAL_MAX_GROUPS, REAL_MAX_SIZE) if self.real else (MAX_GROUPS, MAX_SIZE)
        self.converge_timeout = REAL_CONVERGE_TIMEOUT if self.real else CONVERGE_TIMEOUT
        # operations run in a thread of their own: a random source each, so
        # that a seed replays the same faults at the same moments
        self.rng, self.frng = random.Random(seed), random.Random(seed + 1)
        # no retries: every answer a user would see is recorded
        self.api = Client(lab.state.endpoint, lab.state.token, retries=0, retry_status=False)
        self.rec = Recorder()
        self.faults: Counter = Counter()
        self.ops: Counter = Counter()
        self.violations: list[tuple[int, str]] = []
        self.converge: list[float] = []
        self.groups: dict[str, dict] = {}       # name -> spec we want (None: deleted)
        self.uploaded: list[str] = []
        self.down_windows: list[tuple[float, float]] = []     # when 503 is allowed
        self.n = 0

    # -- set-up ------------------------------------------------------------------
    def setup(self) -> None:
        for i, name in enumerate(IMAGES):
            master = self.dir / f"{name}.raw"
            if self.real:
                shutil.copyfile(self.demo_image, master)
            else:
                master.write_bytes(bytes([i + 1]) * (1 << 20))
            self.api.put_image(name, source_url=f"file://{master}", format="raw", min_replicas=2)
        _wait(lambda: all(self.api.get_image(n)["status"] == "available" for n in IMAGES), 120,
              "the campaign's images available")

    # -- operations ---------------------------------------------------------------
    def op(self) -> None:
        live = [g for g, spec in self.groups.items() if spec is not None]
        kind = self.rng.choice(OPS)
        if kind in ("scale-group", "change-image", "delete-group") and not live:
            kind = "create-group"
        if kind == "create-group" and len(live) >= self.max_groups:
            kind = "scale-group"
        self.ops[kind] += 1
        if kind == "create-group":
            self.n += 1
            name = f"chaos-g{self.n}"
            spec = {"image": self.rng.choice(IMAGES), "flavor": "small",
                    "size": self.rng.randint(1, self.max_size - 1)}
            self.groups[name] = spec
            self.rec.call(kind, self.api.put_group, name, **spec)
        elif kind == "scale-group":
            name = self.rng.choice(live)
            self.groups[name]["size"] = self.rng.randint(0, self.max_size)
            self.rec.call(kind, self.api.patch_group, name, {"size": self.groups[name]["size"]})
        elif kind == "change-image":
            name = self.rng.choice(live)
            self.groups[name]["image"] = next(i for i in IMAGES if i != self.groups[name]["image"])
            self.rec.call(kind, self.api.patch_group, name, {"image": self.groups[name]["image"]})
        elif kind == "delete-group":
            name = self.rng.choice(live)
            self.groups[name] = None
            self.rec.call(kind, self.api.delete_group, name)
        elif kind == "upload-image":
            self.n += 1
            name = f"chaos-u{self.n}"
            data = self.dir / f"{name}.raw"
            data.write_bytes(os.urandom(64 << 10) * 4)
            if self.rec.call(kind, self.api.put_image, name, format="raw", min_replicas=1) is not None:
                self.uploaded.append(name)
                self.rec.call(kind, self.api.upload_image, name, data, retries=0)
            data.unlink(missing_ok=True)
        elif kind == "delete-image" and self.uploaded:
            name = self.uploaded.pop(self.rng.randrange(len(self.uploaded)))
            self.rec.call(kind, self.api.delete_image, name)

    # -- faults ---------------------------------------------------------------------
    def fault(self) -> str:
        kind = self.frng.choice(self.fault_kinds)
        lab = self.lab
        t0 = time.monotonic()
        if kind in ("qemu-storage-daemon", "guest-qemu"):
            # no restart: the compute agent must notice and mend it itself.
            # One of the processes of that kind on any compute node (none
            # when no group has an instance at that moment: not counted)
            pids = sorted(pid for node in lab.nodes("compute") for pid in _pids_of(kind, node))
            if pids:
                os.kill(self.frng.choice(pids), signal.SIGKILL)
                self.faults[kind] += 1
            return kind
        if kind == "tgtd":
            lab.kill_tgtd(self.frng.choice(lab.nodes("storage")).short)
            # an upload streaming into that node's target may be cut: 503
            self.down_windows.append((t0, time.monotonic() + 15))
            self.faults[kind] += 1
            return kind
        if kind == "compute-agent":
            victim = self.frng.choice(lab.nodes("compute"))
        elif kind == "storage-agent":
            victim = self.frng.choice(lab.nodes("storage"))
        elif kind == "zookeeper-member":
            victim = self.frng.choice(lab.nodes("zookeeper"))
        else:
            victim = lab.nodes("service")[0]
        if kind == "gunicorn-worker":
            workers = _children(victim.pid)
            if not workers:
                return kind
            os.kill(self.frng.choice(workers), signal.SIGKILL)     # the master forks a new one
        else:
            lab.stop_node(victim.short, kill=True)
            lab.start_node(victim.short, wait=True, timeout=120)
        if kind in ("zookeeper-member", "gunicorn-master", "storage-agent"):
            # 503 (retry) is the answer while these are away: ZooKeeper's
            # clients move to another member, the service restarts, and an
            # upload streaming through the storage agent that died is cut
            self.down_windows.append((t0, time.monotonic() + 15))   # + the clients' reconnection
        self.faults[kind] += 1
        return kind

    # -- one cycle --------------------------------------------------------------------
    def cycle(self, i: int) -> None:
        ops = [threading.Thread(target=self._ops, args=(self.rng.randint(1, 3),), daemon=True)]
        ops[0].start()
        time.sleep(self.frng.uniform(0, 1.5))         # a random moment amid the operations
        self.fault()
        ops[0].join()
        t0 = time.monotonic()
        if not _poll(self.converged, self.converge_timeout):
            self.violations.append((i, f"not converged after {self.converge_timeout:.0f}s: {self.why_not()}"))
            return
        self.converge.append(time.monotonic() - t0)
        for v in self.invariants():
            self.violations.append((i, v))

    def _ops(self, n: int) -> None:
        for _ in range(n):
            self.op()

    # -- checks -----------------------------------------------------------------------
    def converged(self) -> bool:
        return not self.why_not()

    def why_not(self) -> str:
        try:
            nodes = {n["name"] for n in self.api.nodes()}
            for name, spec in self.groups.items():
                g = self.api.get_group(name)
                if spec is None:
                    if g is not None:
                        return f"{name} not deleted yet"
                    continue
                if g is None:
                    return f"{name} missing"
                insts = g["instances"]
                if len(insts) != spec["size"]:
                    return f"{name}: {len(insts)} instances of {spec['size']}"
                for inst in insts:
                    if inst["state"] != "ready" or inst["image"] != spec["image"] or inst["node"] not in nodes:
                        return f"{name}: {inst['id']} {inst['state']} {inst['image']} on {inst['node']}"
            for name in IMAGES:
                if (self.api.get_image(name) or {}).get("status") != "available":
                    return f"image {name} not available (replicas being made)"
            for name in self.uploaded:
                if (self.api.get_image(name) or {}).get("status") == "error":
                    return f"image {name} in error"
        except (ApiError, requests.RequestException) as exc:
            return f"API: {exc}"
        return ""

    def invariants(self) -> list[str]:
        out = []
        # a request may outlive its group's convergence for a while: one the
        # service's hand-off missed is claimed by a leader after a grace
        # period (3 s) on its next round (5 s); an offer's reservation whose
        # coordinator died expires after 10 s (agents/handshake.py): both
        # must be gone soon after
        deadline = time.monotonic() + REQUEST_GRACE
        state = self._cluster_state()
        while time.monotonic() < deadline and (state["requests"] or any(
                m.get("cowfleet_agent_reservations", 0) for m in state["metrics"].values())):
            time.sleep(1)
            state = self._cluster_state()
        ids = Counter(iid for insts in state["instances"].values() for iid in insts)
        out += [f"duplicate instance {iid}" for iid, n in ids.items() if n > 1]
        records = {(g, iid): node for g, insts in state["instances"].items() for iid, node in insts.items()}
        assigned = {(g, iid): node for node, items in state["assignments"].items() for g, iid in items}
        out += [f"leaked assignment {g}/{iid} on {node}" for (g, iid), node in assigned.items()
                if (g, iid) not in records]
        out += [f"instance {g}/{iid} on {node} has no assignment" for (g, iid), node in records.items()
                if assigned.get((g, iid)) != node]
        for n in self.lab.nodes("compute"):
            on_node = {iid for insts in state["instances"].values() for iid, node in insts.items() if node == n.name}
            for kind, pattern in (("overlay", "overlays/*/*.qcow2"), ("seed", "seeds/*/*.iso")):
                files = {p.stem for p in Path(n.root).glob(f"var/lib/cowfleet/{n.name}/{pattern}")}
                out += [f"leaked {kind} {iid} on {n.name}" for iid in sorted(files - on_node)]
                out += [f"no {kind} for {iid} on {n.name}" for iid in sorted(on_node - files)]
        images = set(state["images"])
        for n in self.lab.nodes("storage"):
            folder = Path(n.root) / "var" / "lib" / "cowfleet" / n.name / "images"
            out += [f"leaked copy {p.name} on {n.name}" for p in folder.glob("*.img") if p.stem not in images]
            out += [f"partial copy {p.name} left on {n.name}" for p in folder.glob("*.partial")]
        if self.real:
            out += self._domain_violations(state)
        if state["requests"]:
            out.append(f"requests left in the queue: {state['requests']}")
        for node, m in state["metrics"].items():
            if m.get("cowfleet_agent_reservations", 0) > 0:
                out.append(f"{node}: {m['cowfleet_agent_reservations']:.0f} reservations held")
            used = {spec["image"] for g, spec in self.groups.items() if spec is not None
                    for iid, n in state["instances"].get(g, {}).items() if n == node}
            if m.get("cowfleet_agent_image_sessions", 0) > len(used):
                out.append(f"{node}: {m['cowfleet_agent_image_sessions']:.0f} image sessions for "
                           f"{len(used)} images in use")
        return out

    def _domain_violations(self, state: dict) -> list[str]:
        """Each compute node's running libvirt domains are exactly its instances."""
        conn = libvirt.open("qemu:///system")
        try:
            names = [d.name() for d in conn.listAllDomains()]
        finally:
            conn.close()
        out = []
        for n in self.lab.nodes("compute"):
            prefix = f"cf-{n.name}--"
            doms = {d[len(prefix):] for d in names if d.startswith(prefix)}
            on_node = {iid for insts in state["instances"].values() for iid, node in insts.items() if node == n.name}
            out += [f"leaked domain {iid} on {n.name}" for iid in sorted(doms - on_node)]
            out += [f"no domain for {iid} on {n.name}" for iid in sorted(on_node - doms)]
        return out

    def _cluster_state(self) -> dict:
        """ZooKeeper and the agents' metrics, read from inside the service's
        namespace (the lab's addresses exist only there)."""
        svc = self.lab.nodes("service")[0]
        agents = {n.name: f"http://{n.addr}:7070" for n in self.lab.nodes() if n.role in ("compute", "storage")}
        code = _STATE_SCRIPT % {"zk": self.lab.state.zk, "secret": str(self.lab.secret_file), "agents": agents}
        for attempt in range(5):
            proc = subprocess.run(["ip", "netns", "exec", svc.netns, sys.executable, "-c", code],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                return json.loads(proc.stdout)
            time.sleep(1 + attempt)
        raise RuntimeError(f"reading the cluster's state failed: {proc.stderr[-800:]}")

    def api_violations(self) -> list[str]:
        out = []
        for t, what, status, detail in self.rec.errors:
            allowed = status == 503 and any(a <= t <= b for a, b in self.down_windows)
            if not allowed and status != 599:
                out.append(f"{what}: HTTP {status}: {detail}")
        return out

    def cleanup(self) -> None:
        for name, spec in self.groups.items():
            if spec is not None:
                self.api.delete_group(name)
        _wait(lambda: all(self.api.get_group(n) is None for n in self.groups), 180, "the campaign's groups gone")
        for name in self.uploaded + list(IMAGES):
            self.api.delete_image(name)


_STATE_SCRIPT = r"""
import json, urllib.request
from cowfleet.zk.connection import connect
from cowfleet.zk import layout
zk = connect(%(zk)r, timeout=20, secret=open(%(secret)r, 'rb').read().strip())
out = {"instances": {}, "assignments": {}, "requests": [], "metrics": {}}
from kazoo.exceptions import NoNodeError
for g in zk.get_children(layout.GROUPS):
    insts = {}
    try:
        for iid in zk.get_children(layout.group_instances(g)):
            try:
                insts[iid] = json.loads(zk.get(layout.group_instance(g, iid))[0] or b"{}").get("node")
            except NoNodeError:
                pass
    except NoNodeError:
        pass
    out["instances"][g] = insts
for node in (zk.get_children(layout.ASSIGNMENTS) if zk.exists(layout.ASSIGNMENTS) else []):
    out["assignments"][node] = [list(layout.parse_assignment(c)) for c in zk.get_children(layout.assignments(node))]
out["requests"] = zk.get_children(layout.REQUESTS)
out["images"] = zk.get_children(layout.IMAGES)
zk.stop()
for node, addr in %(agents)r.items():
    text = urllib.request.urlopen(addr + "/metrics", timeout=10).read().decode()
    m = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            k, _, v = line.rpartition(" ")
            m[k] = float(v)
    out["metrics"][node] = m
print(json.dumps(out))
"""


def _pids_of(kind: str, node) -> list[int]:
    """A compute node's qemu-storage-daemons (its agent starts them inside
    the node's network namespace) or its guests' qemu (libvirtd starts
    them, named guest=cf-NODE--ID)."""
    prog = "qemu-system" if kind == "guest-qemu" else "qemu-storage-daemon"
    netns_ino = os.stat(f"/run/netns/{node.netns}").st_ino
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            args = [a.decode(errors="replace") for a in (p / "cmdline").read_bytes().split(b"\0")]
            ours = (any(f"guest=cf-{node.name}--" in a for a in args) if kind == "guest-qemu"
                    else os.stat(p / "ns" / "net").st_ino == netns_ino)
        except OSError:
            continue
        if args and prog in Path(args[0]).name and ours:
            out.append(int(p.name))
    return out


def _children(pid: int | None) -> list[int]:
    if not pid:
        return []
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _poll(cond, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return False


def _wait(cond, timeout: float, what: str) -> None:
    if not _poll(cond, timeout):
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def report(c: Campaign, cycles: int, seconds: float) -> dict:
    api = c.api_violations()
    violations = [f"cycle {i}: {v}" for i, v in c.violations] + [f"API: {v}" for v in api]
    print(f"\nfault campaign: {cycles} cycles in {seconds:.0f} s "
          f"({'real VMs' if c.real else 'fake hypervisor'} racks lab)")
    print(f"{'faults injected':<28}{sum(c.faults.values()):>8}")
    for k in c.fault_kinds:
        print(f"  {k:<26}{c.faults[k]:>8}")
    print(f"{'operations':<28}{sum(c.ops.values()):>8}")
    for k in OPS:
        print(f"  {k:<26}{c.ops[k]:>8}")
    print(f"{'API answers':<28}{sum(c.rec.statuses.values()):>8}   " +
          ", ".join(f"{s}: {n}" for s, n in sorted(c.rec.statuses.items())))
    print(f"{'violations':<28}{len(violations):>8}")
    for v in violations[:20]:
        print(f"  {v}")
    if c.converge:
        print(f"{'time to converge p50 / p99':<28}{statistics.median(c.converge):>7.1f}s / "
              f"{_pct(c.converge, 0.99):.1f}s  (max {max(c.converge):.1f}s)")
    return {"cycles": cycles, "seconds": seconds, "real": c.real, "faults": dict(c.faults), "operations": dict(c.ops),
            "statuses": {str(k): v for k, v in c.rec.statuses.items()}, "violations": violations,
            "converge_seconds": c.converge}


def run(cycles: int, seed: int, racks: int, nodes_per_rack: int, lab_dir: Path | None = None,
        real: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cowfleet-chaos-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    lab = RacksLab(lab_dir or work / "lab", racks=racks, nodes_per_rack=nodes_per_rack, zk=3, fake=not real)
    try:
        demo = build_demo_image(work / "demo.raw") if real else None
        lab.up(progress=print)
        c = Campaign(lab, seed, work, demo_image=demo)
        c.setup()
        t0 = time.monotonic()
        for i in range(cycles):
            c.cycle(i)
            print(f"cycle {i + 1}/{cycles}: faults {dict(c.faults)}, violations {len(c.violations)}", flush=True)
        result = report(c, cycles, time.monotonic() - t0)
        result["seed"] = seed
        c.cleanup()
        return result
    finally:
        lab.down()
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=200)
    p.add_argument("--seed", type=int, default=None, help="random seed (printed; pass it to replay)")
    p.add_argument("--racks", type=int, default=2)
    p.add_argument("--nodes-per-rack", type=int, default=2, help="compute nodes per rack")
    p.add_argument("--real", action="store_true", help="real VMs (libvirt, qemu, tgtd) instead of the fake "
                   "hypervisor; adds tgtd, qemu-storage-daemon and guest qemu faults")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}")
    result = run(args.cycles, seed, args.racks, args.nodes_per_rack, real=args.real)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
