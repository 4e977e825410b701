"""End-to-end check of the Debian 12 cloud image (cowfleet/guest/debian.py).

Builds the image (or takes the cached one), starts a one-node lab of its own
in a folder under /var/tmp, uploads the image, creates a group with cloud-init
user data and waits until every instance is ``ready`` (the image prints
COWFLEET-READY on its console once cloud-init's final stage has run). Then it
checks, for each instance:

- user data ran: its console shows the line the user data prints;
- the host name is the instance id (cloud-init took it from the seed's
  meta-data): the user data prints ``hostname`` on the console;
- the static address from the seed's network-config is up: the host gets
  the instance id over HTTP from a server the user data starts on port 80
  (python3 -m http.server), and port 22 (sshd) accepts a TCP connection.

    .venv/bin/python bench/cloud_image.py                 # size 1, flavor medium
    .venv/bin/python bench/cloud_image.py --size 2 --flavor large --json out.json

Prints a table (build, PUT -> running, PUT -> user data, PUT -> ready,
checks) and exits 1 when a check fails. Guests run under TCG here: about
3 minutes per boot on 2 cores (cold build about 2 minutes more), too slow for
CI. The lab is always taken down, on Ctrl-C or SIGTERM too.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # bench.cleanup
from bench.cleanup import unwind_on_signals  # noqa: E402

import requests

GROUP = "debcheck"
IMAGE = "debian12"
USER_DATA = """#cloud-config
runcmd:
  - [sh, -c, "echo CF-USERDATA-RAN > /dev/ttyS0"]
  - [sh, -c, "echo CF-HOSTNAME=$(hostname) > /dev/ttyS0"]
  - [sh, -c, "mkdir -p /var/tmp/www && hostname > /var/tmp/www/index.html"]
  - [sh, -c, "cd /var/tmp/www && nohup python3 -m http.server 80 >/dev/null 2>&1 &"]
"""


def _tcp_open(host: str, port: int, timeout: float = 5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_body(url: str, tries: int = 10) -> str | None:
    for _ in range(tries):          # the server starts in the background of runcmd
        try:
            resp = requests.get(url, timeout=5)
            if resp.ok:
                return resp.text
        except requests.RequestException:
            pass
        time.sleep(2)
    return None


def check_instance(inst: dict, console: str) -> dict[str, bool]:
    iid, addr = inst["id"], (inst.get("address") or "").split("/")[0]
    body = _http_body(f"http://{addr}/") if addr else None
    return {
        "user data ran": "CF-USERDATA-RAN" in console,
        "hostname == id": re.findall(r"CF-HOSTNAME=(\S*)", console)[-1:] == [iid],
        "http :80 answers id": body is not None and body.strip() == iid,
        "tcp :22 open": bool(addr) and _tcp_open(addr, 22),
    }


def run(args, lab_dir: Path) -> int:
    from cowfleet.client import Client
    from cowfleet.guest import debian
    from cowfleet.lab.lab import Lab

    was_cached = debian.cached_image() is not None
    t0 = time.monotonic()
    image = Path(args.image) if args.image else debian.build_debian_image(debian.image_path(), progress=print)
    build_s = time.monotonic() - t0
    size_mib = image.stat().st_size / (1 << 20)
    used_mib = image.stat().st_blocks * 512 / (1 << 20)

    lab = Lab(lab_dir / "lab")
    try:
        print(f"starting a one-node lab in {lab.dir} ...", flush=True)
        lab.up(progress=print)
        client = Client(lab.state.endpoint, lab.state.token)
        t_up = time.monotonic()
        client.put_image(IMAGE, format="raw", min_replicas=1)
        client.upload_image(IMAGE, image)
        deadline = time.monotonic() + 300
        while (client.get_image(IMAGE) or {}).get("status") != "available":
            if time.monotonic() > deadline:
                raise RuntimeError(f"image {IMAGE} not available after 300 s")
            time.sleep(0.5)
        upload_s = time.monotonic() - t_up

        t_put = time.monotonic()
        client.put_group(GROUP, image=IMAGE, flavor=args.flavor, size=args.size, user_data=USER_DATA)
        seen: dict[str, dict[str, float]] = {}
        consoles: dict[str, str] = {}
        group: dict = {}
        deadline = t_put + args.timeout
        while True:
            group = client.get_group(GROUP) or {}
            insts = group.get("instances", [])
            now = time.monotonic() - t_put
            for inst in insts:
                marks = seen.setdefault(inst["id"], {})
                if inst.get("state") in ("running", "ready") and "running" not in marks:
                    marks["running"] = now
                log = lab.dir / "nodes" / str(inst.get("node")) / "consoles" / f"{inst['id']}.log"
                try:
                    consoles[inst["id"]] = log.read_text(errors="replace")
                except OSError:
                    pass
                if "CF-USERDATA-RAN" in consoles.get(inst["id"], "") and "user data" not in marks:
                    marks["user data"] = now
                if inst.get("state") == "ready" and "ready" not in marks:
                    marks["ready"] = now
                    print(f"  {inst['id']} ready after {now:.1f}s", flush=True)
                if inst.get("state") == "failed":
                    marks.setdefault("failed", now)
            if len(insts) == args.size and all("ready" in seen.get(i["id"], {}) for i in insts):
                break
            if any("failed" in m for m in seen.values()) or time.monotonic() > deadline:
                print(f"  giving up: {json.dumps(group.get('status'))}", flush=True)
                break
            time.sleep(0.5)

        rows = []
        failed = False
        for inst in group.get("instances", []):
            checks = check_instance(inst, consoles.get(inst["id"], "")) if "ready" in seen[inst["id"]] \
                else {"ready": False}
            failed |= not all(checks.values())
            rows.append((inst, seen[inst["id"]], checks))
        if len(rows) < args.size:
            failed = True

        print(f"\nDebian 12 cloud image {image} ({size_mib:.0f} MiB, {used_mib:.0f} MiB allocated); "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; flavor {args.flavor}\n")
        print(f"build ({'cached' if was_cached or args.image else 'built'}): {build_s:.1f}s   "
              f"upload: {upload_s:.1f}s\n")
        names = list(rows[0][2]) if rows else []
        print(f"{'instance':<16} {'address':<13} {'running':>8} {'user data':>10} {'ready':>8}  checks")
        for inst, marks, checks in rows:
            t = {k: f"{marks[k]:.1f}s" if k in marks else "-" for k in ("running", "user data", "ready")}
            verdicts = ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in checks.items())
            print(f"{inst['id']:<16} {inst.get('address')!s:<13} {t['running']:>8} {t['user data']:>10} "
                  f"{t['ready']:>8}  {verdicts}")
        print("\n(times from the PUT of the group)")
        print("RESULT:", "FAIL" if failed else "PASS")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "image": str(image), "image_mib": size_mib, "allocated_mib": used_mib,
                "build_s": build_s, "cached": was_cached, "upload_s": upload_s, "flavor": args.flavor,
                "checks_names": names,
                "instances": [{"id": i["id"], "address": i.get("address"), "times": m, "checks": c}
                              for i, m, c in rows],
                "pass": not failed}, indent=2))
        return 1 if failed else 0
    finally:
        print("taking the lab down ...", flush=True)
        lab.down()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1, help="instances in the group (default 1)")
    ap.add_argument("--flavor", default="medium", help="flavor (default medium: 1 vCPU, 256 MiB)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for ready (default 900)")
    ap.add_argument("--image", help="use this raw image instead of building/taking the cached one")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if not 1 <= args.size <= 16:
        ap.error("--size 1..16")

    unwind_on_signals()   # SIGTERM, SIGHUP, SIGINT: the finally below runs

    # /var/tmp, not /tmp under a private mount or /root: qemu runs unprivileged
    lab_dir = Path(tempfile.mkdtemp(prefix="cowfleet-cloudimg-", dir="/var/tmp"))
    os.chmod(lab_dir, 0o755)
    try:
        return run(args, lab_dir)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(lab_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
