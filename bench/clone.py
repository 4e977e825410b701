"""Warm clones against cold boots (issue 13): PUT -> all ready for a group of
``--size`` (16) demo guests of flavor small, in one run on a one-node lab:

    boot         start: boot, a cold boot of each (the baseline)
    clone-first  start: clone with no template on the node: the first start
                 makes it (cold boot to the template marker, save), the
                 others wait for it, then all are restored
    clone        start: clone with the template made: restores only

each mode first once in ``--repeat`` (1) rounds, medians compared. Also:
each instance's PUT -> ready latency (p50, p99), the template's disk layer
and save image sizes, and how long making it took (the agent's log).
Target (the issue's): clone <= 0.15x boot for PUT -> all ready.

Not measured here (yet): the issue's third column, a bare libvirt-python
cold boot of the same domain XML on a local overlay.

    .venv/bin/python bench/clone.py [--size 16] [--repeat 1] [--json out.json]

One real one-node lab in a folder under /var/tmp, removed at the end (on
Ctrl-C or SIGTERM too). The guests run under TCG on two shared cores: a
cold-booted group of 16 takes a minute or more.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # bench.cleanup
from bench.cleanup import unwind_on_signals  # noqa: E402

from cowfleet.client import Client
from cowfleet.guest.builder import build_demo_image
from cowfleet.lab.lab import Lab

TARGET = 0.15
MODES = {"boot": "cold boot", "clone-first": "clone, template made", "clone": "clone, template there"}


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def templates_dir(lab: Lab) -> Path:
    return next(p for p in (lab.dir / "nodes").iterdir() if p.name.endswith("-compute-1")) / "templates"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def ready_after_put(client: Client, group: str, size: int, start: str, timeout: float = 900) -> dict:
    t0 = time.time()
    client.put_group(group, image="demo", flavor="small", size=size, start=start)
    while True:
        g = client.get_group(group)
        insts = g["instances"] if g else []
        if len(insts) == size and all(i["state"] == "ready" for i in insts):
            break
        if any(i["state"] == "failed" for i in insts) or time.time() - t0 > timeout:
            raise RuntimeError(f"group {group} not ready: {g['status'] if g else None}")
        time.sleep(0.1)
    each = [ts(i["ready_at"]) - t0 for i in insts]
    running = [ts(i["running_at"]) - t0 for i in insts]
    starts = sorted({(i["start"], i["start_reason"][:80]) for i in insts})
    client.delete_group(group)
    while client.get_group(group) is not None:
        time.sleep(0.2)
    return {"ready_s": max(each), "running_s": max(running), "first_ready_s": min(each),
            "p50_s": percentile(each, 0.5), "p99_s": percentile(each, 0.99), "starts": starts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cowfleet-bench-clone-", dir="/var/tmp"))
    work.chmod(0o755)
    lab = Lab(work / "lab")
    unwind_on_signals()   # SIGTERM, SIGHUP, SIGINT: the finally below runs
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    sizes, made = {}, []
    try:
        print(f"building the demo image and starting a one-node lab in {work}", flush=True)
        image = build_demo_image(work / "demo.raw")
        lab.up()
        client = Client(lab.state.endpoint, lab.state.token)
        client.put_image("demo", source_url=f"file://{image}", format="raw", min_replicas=1)
        while client.get_image("demo")["status"] != "available":
            time.sleep(0.2)
        ready_after_put(client, "warmup", 1, "boot")
        for r in range(args.repeat):
            order = list(MODES)
            for mode in order[r % len(order):] + order[:r % len(order)]:
                start = "boot" if mode == "boot" else "clone"
                if mode == "clone-first":          # no template: this round makes it
                    for t in templates_dir(lab).glob("*"):
                        shutil.rmtree(t)
                elif mode == "clone" and not any(templates_dir(lab).glob("*")):
                    ready_after_put(client, f"make-{r}", 1, "clone")     # made, not timed
                got = ready_after_put(client, f"{mode}-{r}", args.size, start)
                results[mode].append(got)
                print(f"  round {r + 1} {MODES[mode]:<22}: all {args.size} ready {got['ready_s']:6.2f} s "
                      f"(running {got['running_s']:.2f} s, first ready {got['first_ready_s']:.2f} s, "
                      f"p50 {got['p50_s']:.2f} s, p99 {got['p99_s']:.2f} s) {got['starts']}", flush=True)
        for t in templates_dir(lab).glob("*"):
            sizes = {f.name: f.stat().st_blocks * 512 for f in t.iterdir()}
        made = [float(m.group(1)) for m in re.finditer(
            r"template \S+ made in ([0-9.]+) s", (lab.dir / "agent-compute.log").read_text(errors="replace"))]
    finally:
        try:
            lab.down()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    med = {m: statistics.median(r["ready_s"] for r in rs) for m, rs in results.items()}
    run = {m: statistics.median(r["running_s"] for r in rs) for m, rs in results.items()}
    print(f"\n{'group of ' + str(args.size):<24} {'ready (s)':>10} {'running (s)':>12} {'first (s)':>10} "
          f"{'p50 (s)':>8} {'p99 (s)':>8} {'x boot':>7}")
    for mode, label in MODES.items():
        rs = results[mode]
        print(f"{label:<24} {med[mode]:>10.2f} {run[mode]:>12.2f} "
              f"{statistics.median(r['first_ready_s'] for r in rs):>10.2f} "
              f"{statistics.median(r['p50_s'] for r in rs):>8.2f} {statistics.median(r['p99_s'] for r in rs):>8.2f} "
              f"{med[mode] / med['boot']:>7.3f}")
    if sizes:
        print("\ntemplate on disk (allocated): " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(sizes.items())))
    if made:
        print(f"template made in {', '.join(f'{m:.1f}' for m in made)} s (agent log)")
    ratio = med["clone"] / med["boot"]
    print(f"\nclone / boot, PUT -> all ready: {ratio:.3f} (target <= {TARGET}: {'PASS' if ratio <= TARGET else 'FAIL'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "median": med, "ratio": ratio,
                                               "template_bytes": sizes, "template_made_s": made}, indent=2))
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
