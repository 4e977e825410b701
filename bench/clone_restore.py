"""Warm clones, the hypervisor's part (issue 13): how long a template takes
to save and its clones to restore, with and without a copy of its memory.

One run, libvirt only (no lab), in a folder under /var/tmp:

1. the demo guest (128 MiB, TCG) boots cold to its readiness line, with a
   generation ID: the baseline a clone is against;
2. ``save_template``: time and file size;
3. ``--repeat`` (3) times, alternated: restore 1 clone, then 3 at once,
   (a) ``restore_clone`` (a FIFO fed the clone's header and the template's
   stream: no copy) and (b) ``restore_clone(copy=True)`` (a whole copy of
   the image with the clone's header, then libvirt's restore of that file),
   each clone's NIC hot-plugged after. Time: from the call until every
   clone's domain runs (restore_clone returned).

    .venv/bin/python bench/clone_restore.py [--repeat 3] [--json out.json]

Removes everything it made (domains, files), on Ctrl-C or SIGTERM too.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cowfleet.agents.compute.domain import DomainSpec
from cowfleet.agents.compute.hypervisor import LibvirtHypervisor, domain_name
from cowfleet.guest.builder import READY_MARKER, build_demo_image

NODE = f"benchclone-{secrets.token_hex(3)}"


def qcow2(path: Path, backing: Path, fmt: str) -> str:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(backing), str(path)],
                   check=True)
    return str(path)


def spec(d: Path, iid: str, disk: str, n: int = 0) -> DomainSpec:
    """The template (n 0): no NIC, a generation ID; clone n: a user-mode NIC
    of its own, hot-plugged after the restore."""
    return DomainSpec(name=domain_name(NODE, iid), instance_id=iid, group="bench", node=NODE, vcpus=1,
                      memory_mib=128, disk_path=disk, console_log=str(d / f"{iid}.log"), virt_type="qemu",
                      network="user" if n else "none", mac=f"02:00:00:00:{n >> 8:02x}:{n & 255:02x}" if n else None,
                      genid=not n)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="cowfleet-bench-clone-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    hv = LibvirtHypervisor("qemu:///system", "qemu")

    def cleanup(*_):
        for iid in hv.list(NODE):
            hv.destroy(domain_name(NODE, iid))
        shutil.rmtree(d, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        return run(d, hv, args)
    finally:
        cleanup()


def run(d: Path, hv: LibvirtHypervisor, args) -> int:
    master = build_demo_image(d / "demo.raw")
    tmpl = spec(d, "t", qcow2(d / "t.qcow2", master, "raw"))
    t0 = time.monotonic()
    hv.start(tmpl)
    while READY_MARKER not in Path(tmpl.console_log).read_text(errors="replace"):
        time.sleep(0.1)
    boot = time.monotonic() - t0
    t0 = time.monotonic()
    image = hv.save_template(tmpl.name, d / "t.save")
    save = time.monotonic() - t0
    os.chmod(tmpl.disk_path, 0o444)
    counter = iter(range(1, 10_000))

    def clones(copy: bool, n: int) -> float:
        specs = [spec(d, f"c{i}", qcow2(d / f"c{i}.qcow2", Path(tmpl.disk_path), "qcow2"), i)
                 for i in (next(counter) for _ in range(n))]
        threads = [threading.Thread(target=hv.restore_clone, args=(image.path, c), kwargs={"copy": copy})
                   for c in specs]
        t = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.monotonic() - t
        listed = hv.list(NODE)
        assert all(c.instance_id in listed and listed[c.instance_id].running for c in specs), listed
        for c in specs:
            hv.destroy(c.name)
            os.unlink(c.disk_path)
            os.unlink(c.console_log)
        return took

    times: dict[str, list[float]] = {f"{how} x{n}": [] for how in ("fifo", "copy") for n in (1, 3)}
    for r in range(args.repeat):
        order = [("fifo", False), ("copy", True)][::1 if r % 2 == 0 else -1]
        for n in (1, 3):
            for name, copy in order:
                times[f"{name} x{n}"].append(clones(copy, n))
    out = {"boot_to_ready_s": boot, "save_s": save, "image_bytes": os.path.getsize(image.path),
           "stream_bytes": image.body_len, "restore_s": times}
    print(f"demo guest 128 MiB, TCG, load {os.getloadavg()[0]:.2f}")
    print(f"cold boot to READY   {boot:6.2f} s")
    print(f"save_template        {save:6.2f} s   {out['image_bytes'] / 1e6:.1f} MB")
    print(f"{'restore':20} {'median':>7} {'min':>6} {'max':>6}   (s, {args.repeat} runs)")
    for k, v in times.items():
        print(f"{k:20} {statistics.median(v):7.2f} {min(v):6.2f} {max(v):6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
