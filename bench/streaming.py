"""OS streaming vs copying: how long until a group's instances run.

One run, one real one-node lab (ZooKeeper, the service, a storage agent
exporting masters through tgtd, a compute agent with qemu-storage-daemon and
libvirt), in a folder under /var/tmp:

1. **Size independence**: a group of ``--size`` (10) instances from a
   100 MiB master and from a 10 GiB sparse master (overlays never read the
   master when they are made, so a sparse one is fair), alternated
   ``--repeat`` (3) times. Time: the PUT until every instance is ``running``
   (the domain runs; taken from the instances' ``running_at``, not from
   polling). Target: t(10 GiB) / t(100 MiB) <= 1.1.
2. **Against copying**: a group of ``--baseline-size`` (3) from a 2 GiB
   non-sparse (random) master, by cowfleet and by copy-based provisioning
   (``qemu-img convert`` of the master to a per-instance qcow2, flushed to
   disk, then the same libvirt domain started from it), per instance, twice:
   with the master read from disk (O_DIRECT, as from an image store: the
   verdict) and from the page cache where the bench just wrote it.
   Target: baseline / cowfleet >= 20x. Also printed: how much of cowfleet's
   time libvirt's domain starts alone took (from the agent's log), and the
   ratio that bounds on this host.

The masters are not bootable: the domains start (``running``) and their
firmware finds no boot disk. Guest boot under TCG is CPU-bound here and is
not what this measures. The baseline leaves out cowfleet's control plane
(API, placement, lookup): it is in cowfleet's figure only.

    .venv/bin/python bench/streaming.py [--plot streaming.png] [--json out.json]

Needs ~2 GiB x (baseline-size + 3) + 0.2 GiB free under /var/tmp; removes
everything it writes but the plot and JSON, on Ctrl-C or SIGTERM too.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # bench.cleanup
from bench.cleanup import unwind_on_signals  # noqa: E402

from cowfleet.agents.compute.domain import DomainSpec
from cowfleet.agents.compute.hypervisor import LibvirtHypervisor, domain_name
from cowfleet.client import Client
from cowfleet.lab.components import wait_for as wait
from cowfleet.lab.lab import Lab

MIB, GIB = 1 << 20, 1 << 30


def write_master(path: Path, size: int, sparse: bool) -> None:
    with open(path, "wb") as fh:
        if sparse:
            fh.write(os.urandom(4 * MIB))        # some data up front, the rest a hole
            fh.truncate(size)
        else:
            left = size
            while left:
                n = min(left, 16 * MIB)
                fh.write(os.urandom(n))
                left -= n
        fh.flush()
        os.fsync(fh.fileno())


def provision(client: Client, group: str, image: str, size: int) -> float:
    """Seconds from the PUT until every instance of the group is running."""
    t0 = time.time()
    client.put_group(group, image=image, flavor="small", size=size)

    def all_running():
        g = client.get_group(group)
        insts = g["instances"] if g else []
        if len(insts) == size and all(i["state"] in ("running", "ready") for i in insts):
            return insts
        return None
    insts = wait(all_running, 300, f"{size} instances of {group} running", 0.2)
    last = max(_epoch(i["running_at"]) for i in insts)
    return last - t0


def _epoch(iso: str) -> float:
    from datetime import datetime
    return datetime.strptime(iso.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


LOG_LINE = re.compile(r"^(\S+ \S+) .* (\S+) running: session (\d+) ms, overlay (\d+) ms, domain (\d+) ms$")


def agent_timings(lab: Lab, group: str) -> list[dict]:
    """The compute agent's own per-instance timings (its log line when an
    instance runs): image session (lookup + attach, or reuse), overlay, domain
    start (libvirt's createXML + resume), and when the line was logged."""
    from datetime import datetime
    out = []
    for line in (lab.dir / "agent-compute.log").read_text(errors="replace").splitlines():
        m = LOG_LINE.search(line)
        if m and m.group(2).startswith(f"{group}-"):
            at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append({"session_ms": int(m.group(3)), "overlay_ms": int(m.group(4)),
                        "domain_ms": int(m.group(5)), "at": at})
    return out


def domain_window(timings: list[dict]) -> float:
    """Seconds from the first domain start's beginning to the last one's end:
    the part of a group's time that libvirt alone takes (the starts overlap)."""
    return max(t["at"] for t in timings) - min(t["at"] - t["domain_ms"] / 1000 for t in timings)


def remove(client: Client, group: str) -> float:
    t0 = time.monotonic()
    client.delete_group(group)
    wait(lambda: client.get_group(group) is None, 300, f"{group} deleted")
    return time.monotonic() - t0


def baseline(lab: Lab, master: Path, n: int, workdir: Path, virt_type: str, direct: bool) -> dict:
    """Copy-based provisioning: a full copy of the master per instance, then
    the domain. ``direct``: the copy bypasses the page cache (O_DIRECT reads
    and writes), as when the master comes from an image store and not from
    this host's memory; else the master is read from the page cache, where
    this bench just wrote it (the copy is then mostly a write)."""
    hyper = LibvirtHypervisor("qemu:///system", virt_type)
    node = f"{lab.state.lab_id}-baseline"
    cache = ["-T", "none", "-t", "none"] if direct else ["-t", "writeback"]
    copies, starts, names = [], [], []
    workdir.mkdir(exist_ok=True)
    os.chmod(workdir, 0o755)
    t0 = time.monotonic()
    try:
        for i in range(n):
            disk = workdir / f"base-{'d' if direct else 'c'}{i}.qcow2"
            t = time.monotonic()
            subprocess.run(["qemu-img", "convert", "-q", *cache, "-f", "raw", "-O", "qcow2",
                            str(master), str(disk)], check=True)
            with open(disk, "rb+") as fh:
                os.fsync(fh.fileno())       # on disk, as a provisioned volume must be
            copies.append(time.monotonic() - t)
            t = time.monotonic()
            iid = f"base-{'d' if direct else 'c'}{i}"
            spec = DomainSpec(name=domain_name(node, iid), instance_id=iid, group="baseline", node=node,
                              vcpus=1, memory_mib=128, disk_path=str(disk),
                              console_log=str(workdir / f"{iid}.log"), virt_type=virt_type, network="none")
            names.append(spec.name)
            hyper.start(spec)
            starts.append(time.monotonic() - t)
        total = time.monotonic() - t0
    finally:
        for name in names:
            hyper.destroy(name)
        shutil.rmtree(workdir, ignore_errors=True)
    return {"total_s": total, "per_instance_s": total / n, "copy_s": copies, "start_s": starts}


def plot(path: Path, res: dict) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install 'cowfleet[bench]'): no plot", file=sys.stderr)
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    labels = ["100 MiB master", "10 GiB sparse master"]
    runs = [res["small_s"], res["big_s"]]
    a.bar(labels, [statistics.median(r) for r in runs], color=["#4c72b0", "#55a868"])
    for x, r in enumerate(runs):
        a.scatter([x] * len(r), r, color="black", zorder=3, s=12)
    a.set_ylabel("seconds until all running")
    a.set_title(f"cowfleet, group of {res['size']}: ratio {res['size_ratio']:.2f}")
    import numpy as np
    x = np.arange(2)
    copy = [statistics.median(res["baseline_uncached"]["copy_s"]), res["baseline_uncached"]["per_instance_s"]]
    cow = [res["cow_disk_s"], res["cow_per_instance_s"]]
    b.bar(x - 0.2, copy, 0.4, label="full copy (from disk)", color="#c44e52")
    b.bar(x + 0.2, cow, 0.4, label="cowfleet", color="#4c72b0")
    for xs, ys in ((x - 0.2, copy), (x + 0.2, cow)):
        for xi, yi in zip(xs, ys):
            b.text(xi, yi * 1.1, f"{yi:.2f}s", ha="center", fontsize=8)
    if "cow_domain_window_s" in res:     # what libvirt's domain starts alone cost an instance
        floor = res["cow_domain_window_s"] / res["baseline_size"]
        b.hlines(floor, 0.95, 1.45, colors="black", linestyles="dashed", linewidth=1,
                 label=f"cowfleet's domain starts alone ({floor:.2f}s)")
    b.set_xticks(x, ["disk ready", "to running (incl. domain start)"])
    b.set_yscale("log")
    b.set_ylim(0.01, max(copy) * 3)
    b.set_ylabel("seconds per instance (log)")
    b.legend(loc="lower left", fontsize=8)
    b.set_title(f"{res.get('copy_gib', 2)} GiB master, group of {res['baseline_size']}: "
                f"{res['disk_ratio']:.0f}x / {res['copy_ratio']:.0f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=10)
    p.add_argument("--baseline-size", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--small-mib", type=int, default=100)
    p.add_argument("--big-gib", type=int, default=10)
    p.add_argument("--copy-gib", type=int, default=2)
    p.add_argument("--plot", default="streaming.png")
    p.add_argument("--json")
    p.add_argument("--replot", metavar="JSON", help="only draw the plot of an earlier run's --json")
    args = p.parse_args(argv)
    if args.replot:
        return 0 if plot(Path(args.plot), json.loads(Path(args.replot).read_text())) else 1

    need = args.copy_gib * GIB * (args.baseline_size + 3) + args.small_mib * MIB + 256 * MIB
    st = os.statvfs("/var/tmp")
    if st.f_bavail * st.f_frsize < need:
        print(f"not enough room under /var/tmp: need {need / GIB:.1f} GiB", file=sys.stderr)
        return 2
    unwind_on_signals()   # SIGTERM, SIGHUP, SIGINT: the finally below runs
    d = Path(tempfile.mkdtemp(prefix="cowfleet-bench-streaming-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    lab = Lab(d / "lab")
    res: dict = {"size": args.size, "baseline_size": args.baseline_size, "copy_gib": args.copy_gib}
    try:
        t = time.monotonic()
        lab.up()
        client = Client(lab.state.endpoint, lab.state.token)
        compute = next(n for n in client.nodes() if n["role"] == "compute")
        virt_type = compute.get("virt_type") or "qemu"
        masters = {"small": (d / "small.raw", args.small_mib * MIB, False),
                   "big": (d / "big.raw", args.big_gib * GIB, True),
                   "copy": (d / "copy.raw", args.copy_gib * GIB, False)}
        for name, (path, size, sparse) in masters.items():
            write_master(path, size, sparse)
            client.put_image(name, source_url=f"file://{path}", format="raw", min_replicas=1)
        for name in masters:
            wait(lambda: client.get_image(name)["status"] == "available", 600, f"image {name}", 0.5)
        for name in ("small", "big"):
            masters[name][0].unlink()         # the storage node holds its copy now
        print(f"lab up and 3 masters registered in {time.monotonic() - t:.0f}s (virt type {virt_type})")

        res["small_s"], res["big_s"], res["delete_s"] = [], [], []
        for r in range(args.repeat):
            order = ("small", "big") if r % 2 == 0 else ("big", "small")
            for name in order:
                s = provision(client, f"{name}-{r}", name, args.size)
                res[f"{name}_s"].append(s)
                res["delete_s"].append(remove(client, f"{name}-{r}"))
                print(f"  {name:>5} master, group of {args.size}: all running after {s:.2f}s")
        res["size_ratio"] = statistics.median(res["big_s"]) / statistics.median(res["small_s"])

        res["cow3_s"], res["cow3_disk_s"] = [], []
        for r in range(args.repeat):
            res["cow3_s"].append(provision(client, f"copyless-{r}", "copy", args.baseline_size))
            remove(client, f"copyless-{r}")
            timings = agent_timings(lab, f"copyless-{r}")
            res["cow3_disk_s"] += [(t["session_ms"] + t["overlay_ms"]) / 1000 for t in timings]
            res.setdefault("cow3_domain_window_s", []).append(domain_window(timings))
            print(f"  cowfleet, {args.copy_gib} GiB master, group of {args.baseline_size}: "
                  f"all running after {res['cow3_s'][-1]:.2f}s")
        res["cow_total_s"] = statistics.median(res["cow3_s"])
        res["cow_per_instance_s"] = res["cow_total_s"] / args.baseline_size
        for mode, direct in (("cached", False), ("uncached", True)):
            res[f"baseline_{mode}"] = baseline(lab, masters["copy"][0], args.baseline_size,
                                               d / f"baseline-{mode}", virt_type, direct)
            print(f"  full copy ({mode} master), group of {args.baseline_size}: "
                  f"{res[f'baseline_{mode}']['total_s']:.2f}s")
            res[f"copy_ratio_{mode}"] = res[f"baseline_{mode}"]["per_instance_s"] / res["cow_per_instance_s"]
        res["baseline"], res["copy_ratio"] = res["baseline_uncached"], res["copy_ratio_uncached"]
        res["cow_disk_s"] = statistics.median(res["cow3_disk_s"])
        # the bound libvirt sets: the ratio if everything but the domain starts took no time
        res["cow_domain_window_s"] = statistics.median(res["cow3_domain_window_s"])
        res["ratio_ceiling"] = res["baseline_uncached"]["per_instance_s"] / (
            res["cow_domain_window_s"] / args.baseline_size)
        res["disk_ratio"] = statistics.median(res["baseline_uncached"]["copy_s"]) / res["cow_disk_s"]
    finally:
        lab.down()
        shutil.rmtree(d, ignore_errors=True)

    med = statistics.median
    rows = [
        (f"cowfleet, {args.size} x {args.small_mib} MiB master", f"{med(res['small_s']):.2f}",
         " ".join(f"{x:.2f}" for x in res["small_s"]), f"{med(res['small_s']) / args.size:.3f}"),
        (f"cowfleet, {args.size} x {args.big_gib} GiB sparse master", f"{med(res['big_s']):.2f}",
         " ".join(f"{x:.2f}" for x in res["big_s"]), f"{med(res['big_s']) / args.size:.3f}"),
        (f"cowfleet, {args.baseline_size} x {args.copy_gib} GiB master", f"{res['cow_total_s']:.2f}",
         " ".join(f"{x:.2f}" for x in res["cow3_s"]), f"{res['cow_per_instance_s']:.3f}"),
        ("  of which libvirt's domain starts", f"{res['cow_domain_window_s']:.2f}",
         " ".join(f"{x:.2f}" for x in res["cow3_domain_window_s"]),
         f"{res['cow_domain_window_s'] / args.baseline_size:.3f}"),
    ]
    for mode in ("cached", "uncached"):
        b = res[f"baseline_{mode}"]
        rows.append((f"full copy ({mode}), {args.baseline_size} x {args.copy_gib} GiB master",
                     f"{b['total_s']:.2f}", "copies " + " ".join(f"{x:.1f}" for x in b["copy_s"]),
                     f"{b['per_instance_s']:.3f}"))
    print(f"\n{'what':<44} {'median s':>9} {'per inst s':>10}  runs")
    for what, m, runs, per in rows:
        print(f"{what:<44} {m:>9} {per:>10}  {runs}")
    ok_size = res["size_ratio"] <= 1.1
    ok_copy = res["copy_ratio"] >= 20
    print(f"\nt({args.big_gib} GiB) / t({args.small_mib} MiB) = {res['size_ratio']:.2f} (target <= 1.1): "
          f"{'PASS' if ok_size else 'FAIL'}")
    print(f"full copy / cowfleet per instance = {res['copy_ratio']:.1f}x with the master read from disk "
          f"(target >= 20x): {'PASS' if ok_copy else 'FAIL'}; "
          f"{res['copy_ratio_cached']:.1f}x with it in the page cache")
    print(f"of cowfleet's {res['cow_total_s']:.2f}s for {args.baseline_size}, libvirt's domain starts alone "
          f"took {res['cow_domain_window_s']:.2f}s (they overlap): even with the rest at zero the ratio "
          f"would be {res['ratio_ceiling']:.1f}x on this host")
    print(f"disk ready per instance (data path only, domain start excluded): copy "
          f"{statistics.median(res['baseline_uncached']['copy_s']):.2f}s vs session+overlay "
          f"{res['cow_disk_s']:.3f}s = {res['disk_ratio']:.0f}x")
    print(f"group deletions took {min(res['delete_s']):.1f}-{max(res['delete_s']):.1f}s")
    if plot(Path(args.plot), res):
        print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0 if ok_size and ok_copy else 1


if __name__ == "__main__":
    sys.exit(main())
