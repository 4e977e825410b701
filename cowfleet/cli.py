"""``cowfleet``: the command line (lab, demo image, groups, serve).

Errors are one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEMO_CACHE = "/var/cache/cowfleet/demo.raw"


def _err(msg: str, code: int = 1) -> int:
    print(f"cowfleet: {msg}", file=sys.stderr)
    return code


# -- lab ----------------------------------------------------------------------

def cmd_lab_up(args) -> int:
    from cowfleet.lab.lab import open_lab
    existing = open_lab(args.dir)
    if existing.state is not None and (type(existing).__name__ == "RacksLab") != bool(args.racks):
        return _err(f"another kind of lab is up in {existing.dir}: 'cowfleet lab down' first")
    if args.racks:
        from cowfleet.lab.racks import RacksLab
        lab = RacksLab(args.dir, racks=args.racks, nodes_per_rack=args.nodes_per_rack, zk=args.zk,
                       fake=args.fake)
        print(f"starting the racks lab in {lab.dir}: {args.zk} ZooKeeper, 1 service, {args.racks} rack(s) "
              f"x (1 storage + {args.nodes_per_rack} compute), each node in its own network namespace")
    else:
        from cowfleet.lab.lab import Lab
        lab = Lab(args.dir)
        print(f"starting the one-node lab in {lab.dir}")
    st = lab.up(progress=print)
    print(f"COWFLEET_ENDPOINT={st.endpoint}")
    print(f"COWFLEET_TOKEN={st.token}")
    print(f"# written to {lab.env_file}; 'cowfleet lab down' stops everything")
    return 0


def cmd_lab_down(args) -> int:
    from cowfleet.lab.lab import open_lab
    lab = open_lab(args.dir)
    if lab.state is None:
        print(f"no lab in {lab.dir}")
        return 0
    print(f"stopping the lab in {lab.dir}")
    lab.down(progress=print)
    return 0


def cmd_lab_status(args) -> int:
    from cowfleet.lab.lab import open_lab
    lab = open_lab(args.dir)
    rows = lab.status()
    if not rows:
        print(f"no lab in {lab.dir}")
        return 3
    width = max(len(r[0]) for r in rows)
    for name, health, detail in rows:
        print(f"{name:<{width}}  {health:<10}  {detail}")
    healthy = all(h in ("running", "healthy", "registered") for _, h, _ in rows)
    return 0 if healthy else 1


# -- images -------------------------------------------------------------------

def cmd_image_build_demo(args) -> int:
    from cowfleet.guest.builder import build_demo_image
    t0 = time.monotonic()
    out = build_demo_image(args.out)
    print(f"built {out} ({out.stat().st_size // (1 << 20)} MiB) in {time.monotonic() - t0:.1f}s")
    return 0


def cmd_image_build_debian(args) -> int:
    from cowfleet.guest.debian import build_debian_image
    t0 = time.monotonic()
    out = build_debian_image(args.out, progress=lambda line: print(line, file=sys.stderr, flush=True),
                             rebuild=args.rebuild)
    print(f"built {out} ({out.stat().st_size // (1 << 20)} MiB, raw; upload it with "
          f"'cowfleet image upload NAME {out}') in {time.monotonic() - t0:.1f}s")
    return 0


def _image_line(i: dict) -> str:
    size = f"{i['size_bytes'] / (1 << 20):.1f} MiB" if i.get("size_bytes") is not None else "-"
    replicas = ",".join(r["node"] for r in i.get("replicas", [])) or "-"
    return f"{i['name']:<24} {i['format']:<6} {size:>12} {i['status']:<12} {replicas}"


def cmd_image_list(args) -> int:
    print(f"{'NAME':<24} {'FORMAT':<6} {'SIZE':>12} {'STATUS':<12} REPLICAS")
    for i in _client(args).list_images():
        print(_image_line(i))
    return 0


def cmd_image_get(args) -> int:
    i = _client(args).get_image(args.name)
    if i is None:
        return _err(f"image '{args.name}' does not exist")
    print(_image_line(i))
    print(f"sha256 {i.get('sha256') or '-'}; {i.get('message', '')}")
    return 0


def cmd_image_delete(args) -> int:
    client = _client(args)
    if client.get_image(args.name) is None:
        return _err(f"image '{args.name}' does not exist")
    client.delete_image(args.name)
    print(f"deleted image {args.name}")
    return 0


def cmd_image_upload(args) -> int:
    """Create the image (unless it exists) and stream a local file into it."""
    client = _client(args)
    path = Path(args.file)
    if not path.is_file():
        return _err(f"{path}: no such file")
    if client.get_image(args.name) is None:
        client.put_image(args.name, format=args.format, min_replicas=args.min_replicas)
    size = path.stat().st_size
    tty = sys.stdout.isatty()
    t0 = time.monotonic()
    shown = [0.0]

    def progress(sent: int, total: int) -> None:
        now = time.monotonic()
        if sent < total and now - shown[0] < (0.2 if tty else 5):
            return
        shown[0] = now
        rate = sent / max(now - t0, 1e-6) / (1 << 20)
        line = f"uploading {args.name}: {sent / (1 << 20):.0f}/{total / (1 << 20):.0f} MiB ({rate:.0f} MiB/s)"
        print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
    print(f"checksumming {path} ({size / (1 << 20):.0f} MiB)")
    img = client.upload_image(args.name, path, progress=progress)
    if tty:
        print()
    print(f"image {args.name}: {img['status']} ({img.get('message', '')}), sha256 {img['sha256']}, "
          f"{time.monotonic() - t0:.1f}s")
    return 0


# -- groups -------------------------------------------------------------------

def _client(args):
    from cowfleet.client import Client
    return Client(getattr(args, "endpoint", None), getattr(args, "token", None))


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = width if total == 0 else int(width * done / total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _instances_table(group: dict) -> str:
    insts = group["instances"]
    wid = max([18] + [len(i["id"]) for i in insts])
    lines = [f"{'INSTANCE':<{wid}} {'ADDRESS':<15} {'NODE':<22} {'RACK':<8} {'STATE':<11} {'RUNNING':>8} "
             f"{'READY':>8}  MESSAGE"]
    for inst in insts:
        lines.append(f"{inst['id']:<{wid}} {inst.get('address') or '-':<15} {inst['node'] or '-':<22} "
                     f"{inst['rack'] or '-':<8} {inst['state']:<11} {_since(inst, 'running_at'):>8} "
                     f"{_since(inst, 'ready_at'):>8}  {inst.get('message') or ''}".rstrip())
    return "\n".join(lines)


def _since(inst: dict, key: str) -> str:
    from datetime import datetime
    if not inst.get(key) or not inst.get("created_at"):
        return "-"
    t = datetime.fromisoformat(inst[key].replace("Z", "+00:00"))
    c = datetime.fromisoformat(inst["created_at"].replace("Z", "+00:00"))
    return f"+{(t - c).total_seconds():.1f}s"


def watch_group(client, name: str, timeout: float, out=sys.stdout) -> dict:
    """Show live progress until the group is ready (or failed, or timeout)."""
    t0 = time.monotonic()
    last = None
    tty = out.isatty()
    firsts: dict[str, float] = {}
    while True:
        g = client.get_group(name)
        if g is None:
            raise RuntimeError(f"instance group '{name}' disappeared")
        s = g["status"]
        states = {}
        for inst in g["instances"]:
            states[inst["state"]] = states.get(inst["state"], 0) + 1
        elapsed = time.monotonic() - t0
        if s["running"] == g["size"]:
            firsts.setdefault("running", elapsed)
        what = (f"{g['name']} {_bar(s['ready'], g['size'])} {s['ready']}/{g['size']} ready"
                f"  ({', '.join(f'{v} {k}' for k, v in sorted(states.items())) or 'nothing placed yet'})"
                f"  phase={s['phase']}")
        line = f"{elapsed:6.1f}s {what}"
        if tty:
            print("\r" + line.ljust(100), end="", file=out, flush=True)
        elif what != last:       # a log, not a screen: one line per change
            print(line, file=out, flush=True)
        last = what
        if s["phase"] == "ready" or s["failed"]:
            if tty:
                print(file=out)
            g["_elapsed"] = elapsed
            g["_all_running"] = firsts.get("running", elapsed)
            return g
        if elapsed > timeout:
            if tty:
                print(file=out)
            raise TimeoutError(f"group '{name}' not ready after {timeout:.0f}s: {s['message']}")
        time.sleep(0.5)


def cmd_group_list(args) -> int:
    groups = _client(args).list_groups()
    print(f"{'NAME':<24} {'IMAGE':<16} {'FLAVOR':<8} {'SIZE':>5} {'READY':>5}  PHASE")
    for g in groups:
        print(f"{g['name']:<24} {g['image']:<16} {g['flavor']:<8} {g['size']:>5} "
              f"{g['status']['ready']:>5}  {g['status']['phase']}")
    return 0


def cmd_group_get(args) -> int:
    g = _client(args).get_group(args.name)
    if g is None:
        return _err(f"instance group '{args.name}' does not exist")
    s = g["status"]
    print(f"{g['name']}: {g['size']} x {g['flavor']} of image {g['image']}; phase {s['phase']}, "
          f"{s['ready']} ready, {s['running']} running, {s['pending']} pending, {s['failed']} failed"
          f" (generation {g['generation']}, observed {s['observed_generation']}) {s['message']}")
    print(_instances_table(g))
    return 0


def cmd_group_delete(args) -> int:
    client = _client(args)
    if client.get_group(args.name) is None:
        return _err(f"instance group '{args.name}' does not exist")
    client.delete_group(args.name)
    if args.wait:
        t0 = time.monotonic()
        while client.get_group(args.name) is not None:
            if time.monotonic() - t0 > args.timeout:
                return _err(f"instance group '{args.name}' still deleting after {args.timeout:.0f}s")
            time.sleep(0.5)
        print(f"deleted {args.name} in {time.monotonic() - t0:.1f}s")
    else:
        print(f"deleting {args.name}")
    return 0


def cmd_group_wait(args) -> int:
    g = watch_group(_client(args), args.name, args.timeout)
    return 0 if g["status"]["phase"] == "ready" else 1


# -- instances ----------------------------------------------------------------

def _group_of(instance_id: str, given: str | None) -> str:
    """An instance id is ``<group>-<6 hex>`` (placement names them so)."""
    if given:
        return given
    group, _, suffix = instance_id.rpartition("-")
    if not group or len(suffix) != 6:
        raise ValueError(f"cannot tell the group of '{instance_id}' from its id: give --group")
    return group


def cmd_instance_get(args) -> int:
    group = _group_of(args.id, args.group)
    g = _client(args).get_group(group)
    inst = next((i for i in (g or {}).get("instances", []) if i["id"] == args.id), None)
    if inst is None:
        return _err(f"instance '{args.id}' of group '{group}' does not exist")
    width = max(len(k) for k in inst)
    for k, v in inst.items():
        print(f"{k:<{width}}  {'-' if v in (None, '') else v}")
    return 0


def cmd_instance_console(args) -> int:
    """Print the tail of the serial console; --follow keeps printing what comes."""
    client = _client(args)
    group = _group_of(args.id, args.group)
    text, size = client.console(group, args.id, args.tail_bytes)
    sys.stdout.write(text)
    sys.stdout.flush()
    while args.follow:
        time.sleep(args.interval)
        text, new_size = client.console(group, args.id, 65536)
        if new_size < size:                      # restarted: a new console
            sys.stdout.write(f"\n--- console restarted ---\n{text}")
        elif new_size > size:
            sys.stdout.write(text[-(new_size - size):] if new_size - size < len(text) else text)
        sys.stdout.flush()
        size = new_size
    return 0


# -- network and nodes ------------------------------------------------------------

def cmd_network_get(args) -> int:
    n = _client(args).network()
    print(f"instance network {n['instance_cidr']}, a /{n['subnet_prefix']} per compute node"
          if n["instance_cidr"] else "instance network: not configured (cowfleet network set CIDR)")
    if n["subnets"]:
        print(f"{'SUBNET':<18} {'GATEWAY':<15} {'NODE':<28} MEMBER")
        for c in n["subnets"]:
            print(f"{c['subnet']:<18} {c['gateway']:<15} {c['node']:<28} {'yes' if c['member'] else 'no'}")
    return 0


def cmd_network_set(args) -> int:
    n = _client(args).put_network(instance_cidr=args.cidr, subnet_prefix=args.subnet_prefix)
    print(f"instance network {n['instance_cidr']}, a /{n['subnet_prefix']} per compute node")
    return 0


def cmd_node_list(args) -> int:
    nodes = _client(args).nodes()
    print(f"{'NAME':<28} {'ROLE':<8} {'RACK':<10} {'LEADER':<6} {'HEALTHY':<7} {'SUBNET':<18} ADDRESS")
    for n in nodes:
        print(f"{n['name']:<28} {n['role']:<8} {n['rack']:<10} {'yes' if n['leader'] else '':<6} "
              f"{'yes' if n['healthy'] else 'NO':<7} {n.get('subnet') or '-':<18} {n['address'] or '-'}")
    return 0


def cmd_node_remove(args) -> int:
    _client(args).remove_node(args.name)
    print(f"removed node {args.name}: its instance subnet is free again")
    return 0


# -- demo ---------------------------------------------------------------------

def cmd_demo(args) -> int:
    from cowfleet.client import Client
    from cowfleet.guest.builder import build_demo_image
    from cowfleet.guest.builder import is_current
    image = Path(args.image or DEMO_CACHE)
    if not is_current(image):
        print(f"building the demo guest image {image} from Debian packages")
        t0 = time.monotonic()
        build_demo_image(image)
        print(f"  built in {time.monotonic() - t0:.1f}s")
    client = Client()
    img = client.put_image("demo", source_url=f"file://{image.resolve()}", format="raw", min_replicas=1,
                           labels={"purpose": "demo"})
    t0 = time.monotonic()
    while img["status"] != "available":
        if img["status"] == "error" or time.monotonic() - t0 > 60:
            return _err(f"image demo is {img['status']}: {img.get('message')}")
        time.sleep(0.2)
        img = client.get_image("demo")
    print(f"image demo available: {img['size_bytes'] // (1 << 20)} MiB, sha256 {img['sha256'][:16]}…, "
          f"replicas on {', '.join(r['node'] for r in img['replicas'])}")
    existing = client.get_group("demo")
    t_put = time.monotonic()
    g = client.put_group("demo", image="demo", flavor="small", size=args.size)
    print(f"PUT /v1/instance-groups/demo (size {args.size}) -> generation {g['generation']}, "
          f"phase {g['status']['phase']}" + (" (group existed)" if existing else ""))
    g = watch_group(client, "demo", args.timeout)
    print(_instances_table(g))
    print(f"\nall {g['size']} running {g['_all_running']:.1f}s and ready {g['_elapsed']:.1f}s after the PUT"
          f" (PUT took {1000 * (time.monotonic() - t_put - g['_elapsed']):.0f} ms)"
          if g["status"]["phase"] == "ready" else f"\ngroup is {g['status']['phase']}: {g['status']['message']}")
    print(f"\nCOWFLEET_ENDPOINT={client.endpoint}\nCOWFLEET_TOKEN={client.token}")
    print("try:      curl -H \"Authorization: Bearer $COWFLEET_TOKEN\" $COWFLEET_ENDPOINT/v1/instance-groups/demo")
    print("inspect:  .venv/bin/cowfleet group get demo")
    print("scale:    curl -X PATCH -H \"Authorization: Bearer $COWFLEET_TOKEN\" -H 'Content-Type: application/json' "
          "-d '{\"size\": 5}' $COWFLEET_ENDPOINT/v1/instance-groups/demo")
    print("teardown: make lab-down   (or .venv/bin/cowfleet lab down)")
    return 0 if g["status"]["phase"] == "ready" else 1


# -- serve --------------------------------------------------------------------

# -- tokens (kept in ZooKeeper) ---------------------------------------------------

def _zk(args):
    from cowfleet.client import ConfigError, setting
    from cowfleet.zk.connection import connect
    hosts = args.zk or setting("COWFLEET_ZK")
    if not hosts:
        raise ConfigError("no ZooKeeper: pass --zk, set COWFLEET_ZK or run 'cowfleet lab up'")
    return connect(hosts, timeout=10)


def _with_zk(args, fn):
    zk = _zk(args)
    try:
        return fn(zk)
    finally:
        zk.stop()
        zk.close()


def cmd_token_add(args) -> int:
    from cowfleet import tokens
    try:
        token, _ = _with_zk(args, lambda zk: tokens.create(zk, args.name, args.role))
    except ValueError as exc:
        return _err(str(exc))
    print(token)
    print(f"# token '{args.name}' ({args.role}); shown once, ZooKeeper keeps only its SHA-256",
          file=sys.stderr)
    return 0


def cmd_token_list(args) -> int:
    from cowfleet import tokens
    from cowfleet.models import iso
    rows = _with_zk(args, tokens.list_)
    print(f"{'NAME':<24} {'ROLE':<7} {'CREATED':<25} SHA256")
    for t, _, digest in rows:
        print(f"{t.name:<24} {t.role:<7} {iso(t.created_at):<25} {digest[:16]}…")
    return 0


def cmd_token_revoke(args) -> int:
    from cowfleet import tokens
    gone = _with_zk(args, lambda zk: tokens.revoke(zk, args.name))
    if not gone:
        return _err(f"no token named '{args.name}'")
    print(f"revoked token '{args.name}'")
    return 0


def cmd_serve(args) -> int:
    env = dict(os.environ)
    if args.zk:
        env["COWFLEET_ZK"] = args.zk
    if args.tokens:
        env["COWFLEET_TOKENS_FILE"] = args.tokens
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cowfleet-metrics-")
    cmd = [sys.executable, "-m", "gunicorn", "--config", "python:cowfleet.service.gunicorn_conf",
           "--bind", args.bind, "--workers", str(args.workers), "cowfleet.service:create_app()"]
    os.execve(sys.executable, cmd, env)
    return 0


def cmd_terraform_install(args) -> int:
    from cowfleet.provider.install import cmd_install
    return cmd_install(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cowfleet", description="Fleets of ephemeral copy-on-write VMs.")
    sub = p.add_subparsers(dest="command", required=True)

    lab = sub.add_parser("lab", help="the embedded lab: one node, or racks of network namespaces").add_subparsers(dest="lab", required=True)
    for name, fn, text in (("up", cmd_lab_up, "start the lab; returns when every component is healthy"),
                           ("down", cmd_lab_down, "stop the lab and remove everything it made"),
                           ("status", cmd_lab_status, "show the lab's components and their health")):
        sp = lab.add_parser(name, help=text)
        sp.add_argument("--dir", help="lab folder (default: $COWFLEET_LAB_DIR or /var/lib/cowfleet/lab)")
        sp.set_defaults(fn=fn)
        if name == "up":
            sp.add_argument("--racks", type=int, default=0,
                            help="the racks lab: this many racks, every node in its own network namespace "
                                 "(default: the one-node lab on loopback)")
            sp.add_argument("--nodes-per-rack", type=int, default=2, help="compute nodes per rack (racks lab)")
            sp.add_argument("--zk", type=int, default=3, choices=[1, 3, 5],
                            help="ZooKeeper ensemble members (racks lab)")
            sp.add_argument("--fake", action="store_true",
                            help="racks lab: compute agents use the fake hypervisor (no VMs)")

    img = sub.add_parser("image", help="guest images").add_subparsers(dest="image", required=True)
    sp = img.add_parser("build-demo", help="build the tiny demo guest image from Debian packages")
    sp.add_argument("out", help="where to write the raw disk image")
    sp.set_defaults(fn=cmd_image_build_demo)
    sp = img.add_parser("build-debian", help="build a minimal Debian 12 cloud image with cloud-init "
                        "(from Debian packages; cached by recipe)")
    sp.add_argument("out", help="where to write the raw disk image")
    sp.add_argument("--rebuild", action="store_true", help="build again even if the recipe's image is cached")
    sp.set_defaults(fn=cmd_image_build_debian)
    sp = img.add_parser("upload", help="create an image and stream a local file into it")
    sp.add_argument("name")
    sp.add_argument("file")
    sp.add_argument("--format", choices=["raw", "qcow2"], default="raw")
    sp.add_argument("--min-replicas", type=int, default=2)
    sp.set_defaults(fn=cmd_image_upload)
    sp = img.add_parser("list", help="list images")
    sp.set_defaults(fn=cmd_image_list)
    sp = img.add_parser("get", help="show one image")
    sp.add_argument("name")
    sp.set_defaults(fn=cmd_image_get)
    sp = img.add_parser("delete", help="delete an image (refused while a group uses it)")
    sp.add_argument("name")
    sp.set_defaults(fn=cmd_image_delete)

    grp = sub.add_parser("group", help="instance groups").add_subparsers(dest="group", required=True)
    sp = grp.add_parser("list", help="list instance groups")
    sp.set_defaults(fn=cmd_group_list)
    sp = grp.add_parser("get", help="show a group and its instances")
    sp.add_argument("name")
    sp.set_defaults(fn=cmd_group_get)
    sp = grp.add_parser("wait", help="show live progress until the group is ready")
    sp.add_argument("name")
    sp.add_argument("--timeout", type=float, default=600)
    sp.set_defaults(fn=cmd_group_wait)
    sp = grp.add_parser("delete", help="delete a group")
    sp.add_argument("name")
    sp.add_argument("--wait", action="store_true", help="return when every instance is gone")
    sp.add_argument("--timeout", type=float, default=300)
    sp.set_defaults(fn=cmd_group_delete)

    ins = sub.add_parser("instance", help="instances of groups").add_subparsers(dest="instance", required=True)
    sp = ins.add_parser("get", help="show one instance (address, node, state, message)")
    sp.add_argument("id", help="instance id, e.g. web-0a1b2c")
    sp.add_argument("--group", help="its group (default: the id without its last '-xxxxxx')")
    sp.set_defaults(fn=cmd_instance_get)
    sp = ins.add_parser("console", help="the tail of an instance's serial console")
    sp.add_argument("id", help="instance id, e.g. web-0a1b2c")
    sp.add_argument("--group", help="its group (default: the id without its last '-xxxxxx')")
    sp.add_argument("--tail-bytes", type=int, default=None, help="how much of the end (default 64 KiB)")
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing what the guest prints")
    sp.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    sp.set_defaults(fn=cmd_instance_console)

    net = sub.add_parser("network", help="the instance network").add_subparsers(dest="network", required=True)
    sp = net.add_parser("get", help="the instance CIDR and every compute node's subnet")
    sp.set_defaults(fn=cmd_network_get)
    sp = net.add_parser("set", help="configure the instance network (before nodes claim subnets)")
    sp.add_argument("cidr", help="e.g. 10.78.0.0/16")
    sp.add_argument("--subnet-prefix", type=int, default=24, help="each compute node's subnet length")
    sp.set_defaults(fn=cmd_network_set)

    nod = sub.add_parser("node", help="the agents' nodes").add_subparsers(dest="node", required=True)
    sp = nod.add_parser("list", help="list nodes (role, rack, leader, health, instance subnet)")
    sp.set_defaults(fn=cmd_node_list)
    sp = nod.add_parser("remove", help="remove a departed node for good (releases its instance subnet)")
    sp.add_argument("name")
    sp.set_defaults(fn=cmd_node_remove)

    sp = sub.add_parser("demo", help="register the demo image and run group 'demo' on the lab")
    sp.add_argument("--size", type=int, default=3)
    sp.add_argument("--image", help=f"demo image path (built if missing; default {DEMO_CACHE})")
    sp.add_argument("--timeout", type=float, default=600)
    sp.set_defaults(fn=cmd_demo)

    tok = sub.add_parser("token", help="API tokens kept in ZooKeeper").add_subparsers(dest="token",
                                                                                      required=True)
    sp = tok.add_parser("add", help="create a token and print it (once)")
    sp.add_argument("name", help="what the token is for, e.g. ci or terraform")
    sp.add_argument("--role", choices=["admin", "reader"], default="reader")
    sp.set_defaults(fn=cmd_token_add)
    sp = tok.add_parser("list", help="list tokens (names, roles; never the tokens)")
    sp.set_defaults(fn=cmd_token_list)
    sp = tok.add_parser("revoke", help="delete a token by name")
    sp.add_argument("name")
    sp.set_defaults(fn=cmd_token_revoke)
    for sp in (tok.choices["add"], tok.choices["list"], tok.choices["revoke"]):
        sp.add_argument("--zk", help="ZooKeeper connection string (default $COWFLEET_ZK or the lab's)")

    tf = sub.add_parser("terraform", help="the Terraform provider").add_subparsers(dest="terraform", required=True)
    sp = tf.add_parser("install", help="install the provider for a local Terraform and print the CLI config")
    sp.add_argument("--dir", help="where to install (default ~/.local/share/cowfleet/terraform)")
    sp.add_argument("--dev-override", action="store_true",
                    help="also a dev_overrides entry: no 'terraform init' needed (Terraform warns of it)")
    sp.set_defaults(fn=cmd_terraform_install)

    sp = sub.add_parser("serve", help="run the control service under gunicorn")
    sp.add_argument("--bind", default="127.0.0.1:8080")
    sp.add_argument("--workers", type=int, default=4)
    sp.add_argument("--zk", help="ZooKeeper connection string (default $COWFLEET_ZK)")
    sp.add_argument("--tokens", help="token file: 'TOKEN ROLE' lines (default $COWFLEET_TOKENS_FILE)")
    sp.set_defaults(fn=cmd_serve)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import logging
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)   # errors are reported as one line
    from cowfleet.client import ApiError, ConfigError
    from cowfleet.lab.components import LabError
    from cowfleet.guest.builder import BuildError
    from kazoo.handlers.threading import KazooTimeoutError
    import requests
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except (ApiError, ConfigError, LabError, BuildError, TimeoutError, RuntimeError, ValueError) as exc:
        return _err(str(exc).splitlines()[0] if not isinstance(exc, LabError) else str(exc))
    except KazooTimeoutError:
        return _err("cannot reach ZooKeeper (check --zk / COWFLEET_ZK)")
    except requests.ConnectionError as exc:
        return _err(f"cannot reach the service: {exc.request.url if exc.request else exc}")


if __name__ == "__main__":
    sys.exit(main())
