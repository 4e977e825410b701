"""``cowfleet group``: instance groups (create, apply, scale, update, delete,
get, list, wait, events), the way kubectl and openstack spell such commands."""
from __future__ import annotations

import json
import sys
import time

import click
import yaml

from cowfleet.cli.common import (age, client, delete_and_wait, done, emit, labels_arg, name_argument, output_format,
                                 output_option, Progress, read_arg, read_commands, since, table, wait_options)
from cowfleet.client import ApiError, seg
from cowfleet import defaults

# what `group get -o yaml` shows that is not spec: dropped by `group apply -f`,
# so that a file saved from get applies as it is
READ_ONLY = ("name", "etag", "generation", "status", "instances", "created_at", "updated_at")


def existing_names(cl) -> list[dict]:
    """What the shell completes NAME from."""
    return cl.list_groups()


# -- tables -------------------------------------------------------------------------

def _states(g: dict) -> str:
    counts: dict[str, int] = {}
    for inst in g["instances"]:
        counts[inst["state"]] = counts.get(inst["state"], 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing placed yet"


def groups_table(groups: list[dict], wide: bool) -> str:
    headers = ["NAME", "IMAGE", "FLAVOR", "SIZE", "READY", "PHASE", "REASON"]
    if wide:
        headers += ["RUNNING", "PENDING", "FAILED", "GEN", "OBSERVED", "STRATEGY", "MESSAGE"]
    rows = []
    for g in groups:
        s = g["status"]
        row = [g["name"], g["image"], g["flavor"], g["size"], s["ready"], s["phase"], _not_ready_reason(g)]
        if wide:
            row += [s["running"], s["pending"], s["failed"], g["generation"], s["observed_generation"],
                    g["placement"].get("strategy"), s["message"]]
        rows.append(row)
    return table(headers, rows, right=("SIZE", "READY", "RUNNING", "PENDING", "FAILED", "GEN", "OBSERVED"))


def _not_ready_reason(g: dict) -> str:
    """The Ready condition's reason while it is False ("" when ready)."""
    ready = next((c for c in g["status"].get("conditions") or [] if c["type"] == "Ready"), None)
    return ready["reason"] if ready and ready["status"] == "False" else ""


def instances_table(g: dict, wide: bool = False) -> str:
    headers = ["INSTANCE", "ADDRESS", "NODE", "RACK", "STATE", "REASON", "RUNNING", "READY"]
    if wide:
        headers += ["IMAGE", "MAC", "CREATED"]
    headers.append("MESSAGE")
    rows = []
    for i in g["instances"]:
        row = [i["id"], i.get("address"), i["node"], i["rack"], i["state"], i.get("reason") or "",
               since(i.get("created_at"), i.get("running_at")), since(i.get("created_at"), i.get("ready_at"))]
        if wide:
            row += [i.get("image"), i.get("mac"), i.get("created_at")]
        rows.append(row + [i.get("message") or ""])
    return table(headers, rows, right=("RUNNING", "READY"))


def conditions_table(g: dict) -> str:
    rows = [[c["type"], c["status"], c["reason"], age(c.get("since")), c["message"]]
            for c in g["status"].get("conditions") or []]
    return table(["CONDITION", "STATUS", "REASON", "SINCE", "MESSAGE"], rows)


def group_table(g: dict, wide: bool) -> str:
    s = g["status"]
    head = (f"{g['name']}: {g['size']} x {g['flavor']} of image {g['image']}; phase {s['phase']}, "
            f"{s['ready']} ready, {s['running']} running, {s['pending']} pending, {s['failed']} failed"
            f" (generation {g['generation']}, observed {s['observed_generation']})"
            + (f" {s['message']}" if s["message"] else ""))
    if wide:
        p, u = g["placement"], g["update_policy"]
        head += (f"\nplacement {p.get('strategy')}, max_per_node {p.get('max_per_node') or '-'}; "
                 f"update max_unavailable {u.get('max_unavailable')}, max_surge {u.get('max_surge')}; "
                 f"labels {','.join(f'{k}={v}' for k, v in g['labels'].items()) or '-'}; "
                 f"persistent {'yes' if g['persistent'] else 'no'}; start {g.get('start', 'boot')}; "
                 f"{len(g['ssh_authorized_keys'])} ssh key(s); user_data "
                 f"{'%d chars' % len(g['user_data']) if g.get('user_data') else '-'}")
    return head + "\n\n" + conditions_table(g) + "\n\n" + instances_table(g, wide)


# -- waiting --------------------------------------------------------------------------

def _bar(done_: int, total: int, width: int = 20) -> str:
    # a scale-in has more ready than its new size until the extra ones go
    filled = width if total == 0 else int(width * min(done_, total) / total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _why(g: dict) -> str:
    """The reasons a group is not ready: its Ready condition (which gathers
    every cause: failed, unplaced, pending and why, booting, rolling update),
    else its message and its instances' ones."""
    ready = next((c for c in g["status"].get("conditions") or [] if c["type"] == "Ready"), None)
    if ready and ready["status"] == "False":
        return f"{ready['reason']}: {ready['message']}"
    msgs = [g["status"]["message"]] + sorted({i["message"] for i in g["instances"] if i.get("message")})
    return "; ".join(m for m in msgs if m) or "no reason given"


def watch_group(cl, name: str, timeout: float, generation: int | None = None) -> dict:
    """Live progress on stderr until the group is ready at ``generation`` (or
    later), or an instance failed; TimeoutError with the reasons after
    ``timeout``. The result has ``_elapsed`` and ``_all_running`` (seconds)."""
    t0 = time.monotonic()
    progress = Progress()
    all_running = None
    seen = False
    try:
        while True:
            g = cl.get_group(name)
            elapsed = time.monotonic() - t0
            if g is None:
                raise RuntimeError(f"instance group '{name}' " + ("was deleted" if seen else "does not exist"))
            seen = True
            s = g["status"]
            current = s["observed_generation"] >= (generation or g["generation"])
            if s["running"] == g["size"] and current and all_running is None:
                all_running = elapsed
            what = (f"{g['name']} {_bar(s['ready'], g['size'])} {s['ready']}/{g['size']} ready  ({_states(g)})"
                    f"  phase={s['phase']}")
            progress.show(f"{elapsed:6.1f}s {what}", key=what)
            if s["phase"] == "deleting":
                raise RuntimeError(f"instance group '{name}' is being deleted")
            if current and (s["phase"] == "ready" and s["ready"] == g["size"] or s["failed"]):
                g["_elapsed"], g["_all_running"] = elapsed, all_running if all_running is not None else elapsed
                return g
            if elapsed > timeout:
                raise TimeoutError(f"instance group '{name}' not ready after {timeout:.0f}s: {s['ready']}/"
                                   f"{g['size']} ready, phase {s['phase']}: {_why(g)}")
            time.sleep(0.5)
    finally:
        progress.done()


def _waited(g: dict, verb: str = "") -> None:
    """The outcome of a wait: the group on stdout; if an instance failed,
    why on stderr (one line, as every error) and exit 1."""
    g.pop("_all_running", None)
    elapsed = g.pop("_elapsed")
    done(f"instance group {g['name']}{verb}: {g['status']['ready']}/{g['size']} ready in {elapsed:.1f}s", g)
    failed = g["status"]["failed"]
    if failed:
        raise click.ClickException(f"instance group {g['name']}: {failed} failed: {_why(g)}")


def _finish(g: dict, verb: str, wait: bool, timeout: float) -> None:
    """Print the outcome of a change; with --wait, wait for the group first
    (exit 1 if an instance failed)."""
    if wait:
        _waited(watch_group(client(), g["name"], timeout, generation=g["generation"]), f" {verb}")
    else:
        done(f"instance group {g['name']} {verb} (generation {g['generation']})", g)


# -- the spec from flags -------------------------------------------------------------

def spec_options(create: bool):
    """The group's spec as options: all optional for ``update`` (a merge patch)."""
    def deco(fn):
        opts = [
            click.option("--image", required=create, help="the image its instances boot"),
            click.option("--flavor", default="small" if create else None, show_default=create,
                         help="the instance size"),
            click.option("--size", type=click.IntRange(min=0), default=1 if create else None, show_default=create,
                         help="how many instances"),
            click.option("--strategy", type=click.Choice(list(defaults.STRATEGIES)),
                         help=f"placement: spread over nodes and racks, or pack (default {defaults.STRATEGY})"),
            click.option("--max-per-node", type=click.IntRange(min=1), help="at most this many on one node"),
            click.option("--user-data", metavar="TEXT|@FILE",
                         help="cloud-init user-data for every instance (@FILE reads a file, @- stdin)"),
            click.option("--ssh-key", "ssh_keys", multiple=True, metavar="KEY|@FILE",
                         help="an OpenSSH public key (@FILE: every key line of a file); repeatable"
                              + ("" if create else "; replaces the group's keys")),
            click.option("--label", "labels", multiple=True, metavar="K=V",
                         help="a label; repeatable" + ("" if create else "; K- removes K")),
            click.option("--max-unavailable", type=click.IntRange(min=0),
                         help="rolling updates: instances that may be down at once (default 1)"),
            click.option("--max-surge", type=click.IntRange(min=0),
                         help="rolling updates: instances made beyond size meanwhile (default 1)"),
            click.option("--persistent/--ephemeral", default=None,
                         help="keep instance overlays across restarts (default ephemeral)"),
            click.option("--ready-timeout", type=click.IntRange(min=1), metavar="SECONDS",
                         help="an instance not ready this long after its start is failed "
                              "(reason ReadyTimeout; default 900)"),
            click.option("--start", type=click.Choice(defaults.STARTS),
                         help="how instances start: boot (default), clone (from a warm-clone template "
                              "of the image and flavor), auto (a clone where a template can be had)"),
        ]
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return deco


def _ssh_keys(values) -> list[str]:
    keys: list[str] = []
    for v in values:
        text = read_arg(v, "--ssh-key")
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")] \
            if v.startswith("@") else [text]
    return keys


def spec_from(opts: dict, patch: bool) -> dict:
    spec: dict = {k: opts[k] for k in ("image", "flavor", "size") if opts.get(k) is not None}
    placement = {k: opts[k] for k in ("strategy", "max_per_node") if opts.get(k) is not None}
    policy = {k: opts[k] for k in ("max_unavailable", "max_surge") if opts.get(k) is not None}
    if placement:
        spec["placement"] = placement
    if policy:
        spec["update_policy"] = policy
    if opts.get("user_data") is not None:
        spec["user_data"] = read_arg(opts["user_data"], "--user-data")
    if opts.get("ssh_keys"):
        spec["ssh_authorized_keys"] = _ssh_keys(opts["ssh_keys"])
    if opts.get("labels"):
        spec["labels"] = labels_arg(opts["labels"], allow_removal=patch)
    if opts.get("persistent") is not None:
        spec["persistent"] = opts["persistent"]
    if opts.get("ready_timeout") is not None:
        spec["ready_timeout"] = opts["ready_timeout"]
    if opts.get("start") is not None:
        spec["start"] = opts["start"]
    return spec


# -- commands -------------------------------------------------------------------------

@click.group("group")
def group():
    """Instance groups: N instances of an image and a flavor."""


read_commands(group, "instance group", existing_names, lambda cl, name: cl.get_group(name),
              groups_table, group_table, get_help="Show a group, its status and its instances.")


@group.command("create")
@click.argument("name")
@spec_options(create=True)
@wait_options("every instance is ready")
@output_option
def create(name, wait, timeout, output, **opts):
    """Create a group from options (fails if it exists: see update, apply)."""
    cl = client()
    try:
        g = cl.request("PUT", f"/v1/instance-groups/{seg(name)}", spec_from(opts, patch=False),
                       headers={"If-None-Match": "*"}).json()
    except ApiError as exc:
        if exc.status == 412:
            raise click.ClickException(f"instance group '{name}' exists: change it with "
                                       f"'cowfleet group update' or 'cowfleet group apply'")
        raise
    _finish(g, "created", wait, timeout)


def _documents(path: str) -> list[dict]:
    try:
        text = sys.stdin.read() if path == "-" else open(path).read()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="-f")
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]   # JSON is YAML too
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise click.BadParameter(f"{path} is not valid YAML or JSON{where}", param_hint="-f")
    out = []
    for d in docs:
        out += d if isinstance(d, list) else [d]
    if not out or not all(isinstance(d, dict) for d in out):
        raise click.BadParameter(f"{path} must hold a group object (a mapping), or a list of them",
                                 param_hint="-f")
    return out


@group.command("apply")
@click.option("-f", "--filename", "path", required=True, metavar="FILE",
              help="YAML or JSON: a group (as 'group get -o yaml' prints it, or just its spec and name), "
                   "a list of them, or several YAML documents; - reads stdin")
@click.argument("name", required=False)
@wait_options("every group is ready")
@output_option
def apply(path, name, wait, timeout, output):
    """Create or update groups to match a file (declarative, like kubectl apply)."""
    docs = _documents(path)
    if name and len(docs) > 1:
        raise click.BadParameter("NAME names one group, and the file holds several", param_hint="NAME")
    cl = client()
    plans = []
    for d in docs:
        gname = name or d.get("name")
        if not gname or not isinstance(gname, str):
            raise click.BadParameter("a group in the file has no 'name' (or give NAME)", param_hint="-f")
        plans.append((gname, {k: v for k, v in d.items() if k not in READ_ONLY}))
    results = []
    for gname, spec in plans:
        before = cl.get_group(gname)
        g = cl.put_group(gname, **spec)
        verb = ("created" if before is None else
                "configured" if g["generation"] != before["generation"] else "unchanged")
        results.append((g, verb))
    failed = []                 # each group is waited for and shown; the failures make one error line
    for g, verb in results:
        try:
            _finish(g, verb, wait, timeout)
        except click.ClickException as exc:
            failed.append(exc.format_message())
    if failed:
        raise click.ClickException("; ".join(failed))


@group.command("scale")
@name_argument(existing_names)
@click.argument("size", type=click.IntRange(min=0))
@wait_options("every instance is ready")
@output_option
def scale(name, size, wait, timeout, output):
    """Change a group's size (a merge patch of size)."""
    g = client().patch_group(name, {"size": size})
    _finish(g, f"scaled to {size}", wait, timeout)


@group.command("update")
@name_argument(existing_names)
@spec_options(create=False)
@wait_options("every instance is ready (a rolling update when the image or flavor changes)")
@output_option
def update(name, wait, timeout, output, **opts):
    """Change some of a group's spec (a JSON merge patch: what is not given stays)."""
    patch = spec_from(opts, patch=True)
    if not patch:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    g = client().patch_group(name, patch)
    _finish(g, "updated", wait, timeout)


@group.command("delete")
@name_argument(existing_names)
@wait_options("every instance is gone", default_timeout=300)
@output_option
def delete(name, wait, timeout, output):
    """Delete a group and its instances."""
    cl = client()

    def left(_elapsed) -> str:
        g = cl.get_group(name)
        return f"{name}: {len(g['instances']) if g else 0} instance(s) left"
    delete_and_wait(f"instance group '{name}'", lambda: cl.get_group(name), lambda: cl.delete_group(name), wait,
                    timeout, show=left)


@group.command("wait")
@name_argument(existing_names)
@click.option("--timeout", type=click.FloatRange(min=0), default=600, show_default=True)
@output_option
def wait_(name, timeout, output):
    """Wait until a group is ready, showing progress on stderr (exit 1 if an instance failed)."""
    _waited(watch_group(client(), name, timeout))



# -- events ---------------------------------------------------------------------------

def _object(e: dict) -> str:
    return f"instance/{e['instance']}" if e.get("instance") else "group"


def events_table(items: list[dict], wide: bool) -> str:
    headers = ["AGE", "TYPE", "REASON", "OBJECT"] + (["NODE", "GEN", "SOURCE", "TIME"] if wide else []) + ["MESSAGE"]
    rows = []
    for e in items:
        row = [age(e["time"]), e["type"], e["reason"], _object(e)]
        if wide:
            row += [e.get("node"), e.get("generation"), e.get("source"), e["time"]]
        rows.append(row + [e["message"]])
    return table(headers, rows, right=("AGE",)) if rows else ""


def _follow_line(e: dict) -> str:
    """One event as ``--follow`` prints it: fixed columns (a table cannot be
    sized to rows that have not come yet), the time itself rather than an age."""
    return f"{e['time']:<24}  {e['type']:<7}  {e['reason']:<11}  {_object(e):<24}  {e['message']}"


@group.command("events")
@name_argument(existing_names)
@click.option("--follow", "-f", is_flag=True, help="keep printing new events until the group is gone (Ctrl-C stops)")
@click.option("--limit", type=click.IntRange(1, 200), default=None,
              help="how many of the newest to show first (default 100; a group keeps its newest 200)")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="--follow: seconds between two looks")
@output_option
def events(name, follow, limit, interval, output):
    """A group's recent events, oldest first: what the service, the leader and the
    agents did (created, scaled, placed, started, ready, failed and why, replaced...)."""
    cl = client()
    items = cl.group_events(name, limit=limit)
    if items is None:
        raise click.ClickException(f"instance group '{name}' does not exist")
    if not follow:
        emit(items, events_table)
        return
    fmt = output_format()

    def show(batch: list[dict]) -> None:
        for e in batch:
            if fmt == "json":
                click.echo(json.dumps(e))                 # one object a line (NDJSON)
            elif fmt == "yaml":
                click.echo("---\n" + yaml.safe_dump(e, sort_keys=False), nl=False)
            else:
                click.echo(_follow_line(e))
    if fmt not in ("json", "yaml"):
        click.echo(f"{'TIME':<24}  {'TYPE':<7}  {'REASON':<11}  {'OBJECT':<24}  MESSAGE")
    show(items)
    last = items[-1]["id"] if items else None
    try:
        while True:
            time.sleep(interval)
            # every page after the last one seen (a burst may be more than one)
            while True:
                batch = cl.group_events(name, after=last, limit=200) if last else cl.group_events(name, limit=200)
                if batch is None:
                    click.echo(f"instance group '{name}' is gone", err=True)
                    return
                show(batch)
                if batch:
                    last = batch[-1]["id"]
                if len(batch) < 200:
                    break
    except KeyboardInterrupt:
        return
