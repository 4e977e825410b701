"""What every command shares: the API client from the global options, the
output formats (-o table|wide|json|yaml), progress on stderr, --wait.

Results go to stdout, and only results: progress and notes go to stderr,
so ``cowfleet ... -o json > file`` holds exactly the API's objects.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import click
import yaml

OUTPUTS = ("table", "wide", "json", "yaml")


@dataclass
class Settings:
    """The global options; the client is made on first use, so commands that
    need no service (lab, image build-demo, --help) never look for one."""
    endpoint: str | None = None
    token: str | None = None
    output: str | None = None
    _client: object = field(default=None, repr=False)

    def client(self):
        if self._client is None:
            from cowfleet.client import Client
            self._client = Client(self.endpoint, self.token)
        return self._client


def settings() -> Settings:
    return click.get_current_context().find_object(Settings)


def client():
    return settings().client()


def output_format() -> str:
    """The command's -o, else the global one, else table."""
    ctx = click.get_current_context()
    return ctx.params.get("output") or settings().output or "table"


def output_option(fn):
    return click.option("-o", "--output", type=click.Choice(OUTPUTS), default=None,
                        help="table (default), wide (more columns), json or yaml (the API's objects, as they are)")(fn)


def wait_options(what: str, default_timeout: float = 600, immediate: bool = False):
    """--wait / --timeout. ``immediate``: the change is complete when the
    API answers; --wait is accepted so that scripts can pass it everywhere."""
    def deco(fn):
        fn = click.option("--timeout", type=click.FloatRange(min=0), default=default_timeout, show_default=True,
                          help="seconds --wait waits before failing")(fn)
        text = ("accepted for uniformity: the change is complete when the command returns" if immediate
                else f"return only when {what}, showing progress on stderr")
        return click.option("--wait", is_flag=True, help=text)(fn)
    return deco


def note(message: str) -> None:
    """Progress and notes: stderr, never mixed with results."""
    click.echo(message, err=True)


class Progress:
    """A line on stderr updated in place on a terminal; in a log (not a tty),
    one line per change."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.last = None
        self.shown = False

    def show(self, line: str, key: str | None = None) -> None:
        if self.tty:
            sys.stderr.write("\r" + line.ljust(100)[:max(len(line), 100)])
            sys.stderr.flush()
            self.shown = True
        elif (key or line) != self.last:
            print(line, file=sys.stderr, flush=True)
        self.last = key or line

    def done(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self.shown = False


def emit(obj, table: Callable[[object, bool], str]) -> None:
    """Print an API object (or a list of them) in the chosen format: json and
    yaml as the API sent it; table and wide through ``table(obj, wide)``."""
    fmt = output_format()
    if fmt == "json":
        click.echo(json.dumps(obj, indent=2))
    elif fmt == "yaml":
        click.echo(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True), nl=False)
    else:
        text = table(obj, fmt == "wide")
        if text:
            click.echo(text)


def structured() -> bool:
    return output_format() in ("json", "yaml")


def done(message: str, obj=None, table: Callable[[object, bool], str] | None = None) -> None:
    """The result of a change: the object in json/yaml, else ``message`` (or the table)."""
    if obj is not None and structured():
        emit(obj, lambda o, w: "")
    elif table is not None and obj is not None:
        emit(obj, table)
    else:
        click.echo(message)


def cell(value) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def table(headers: Iterable[str], rows: Iterable[Iterable], right: Iterable[str] = ()) -> str:
    """Columns as wide as their widest cell (header included); numbers in
    ``right`` columns aligned right; the last column is not padded."""
    headers = list(headers)
    rows = [[cell(v) for v in row] for row in rows]
    right = set(right)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = []
    for row in [headers] + rows:
        parts = []
        for i, (h, v) in enumerate(zip(headers, row)):
            last = i == len(headers) - 1
            parts.append(v.rjust(widths[i]) if h in right else (v if last else v.ljust(widths[i])))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def key_values(items: Iterable[tuple[str, object]]) -> str:
    """One object as KEY  value lines (``get`` of things without a list view)."""
    items = list(items)
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k:<{width}}  {cell(v)}" for k, v in items)


def since(created: str | None, at: str | None) -> str:
    """``+12.3s``: how long after ``created`` ``at`` came (RFC 3339 strings)."""
    if not created or not at:
        return "-"
    t = datetime.fromisoformat(at.replace("Z", "+00:00"))
    c = datetime.fromisoformat(created.replace("Z", "+00:00"))
    return f"+{(t - c).total_seconds():.1f}s"


def age(at: str | None, now: datetime | None = None) -> str:
    """How long ago ``at`` (RFC 3339) was, as kubectl prints ages: 42s, 3m, 5h, 2d."""
    if not at:
        return "-"
    t = datetime.fromisoformat(at.replace("Z", "+00:00"))
    secs = max(0, int(((now or datetime.now(timezone.utc)) - t).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= 2 * size:          # as kubectl: 119s, 2m ... 119m, 2h ... 47h, 2d
            return f"{secs // size}{unit}"
    return f"{secs}s"


def read_arg(value: str | None, what: str) -> str | None:
    """``@FILE`` is the file's text, ``@-`` stdin; anything else is the value itself."""
    if value is None or not value.startswith("@"):
        return value
    path = value[1:]
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint=what)


def labels_arg(values: Iterable[str], allow_removal: bool = False) -> dict[str, str | None]:
    """``k=v`` pairs (and, for a merge patch, ``k-``: remove k)."""
    out: dict[str, str | None] = {}
    for v in values:
        key, eq, value = v.partition("=")
        if allow_removal and not eq and v.endswith("-") and len(v) > 1:
            out[v[:-1]] = None
        elif not eq or not key:
            raise click.BadParameter(f"'{v}' is not key=value" + (" (or key- to remove)" if allow_removal else ""),
                                     param_hint="--label")
        else:
            out[key] = value
    return out


def wait_until(check: Callable[[], object], timeout: float, what: str, show: Callable[[float], str] | None = None):
    """Poll ``check`` until it returns something true; progress on stderr;
    TimeoutError naming ``what`` after ``timeout`` seconds."""
    progress = Progress()
    t0 = time.monotonic()
    try:
        while True:
            got = check()
            elapsed = time.monotonic() - t0
            if got:
                return got
            if show is not None:
                progress.show(f"{elapsed:6.1f}s {show(elapsed)}", key=show(elapsed))
            if elapsed > timeout:
                raise TimeoutError(f"{what}: still not done after {timeout:.0f}s")
            time.sleep(0.5)
    finally:
        progress.done()


def name_argument(list_of: Callable | None = None):
    """The NAME argument; with ``list_of(client)``, the shell completes it
    from the objects that exist (asked of the API, quickly; nothing on error)."""
    def complete(ctx, param, incomplete):
        try:
            from cowfleet.client import Client
            root = ctx.find_root().params
            cl = Client(root.get("endpoint"), root.get("token"), timeout=3, retries=0)
            return [o["name"] for o in list_of(cl) if o["name"].startswith(incomplete)]
        except Exception:            # a completion never fails aloud: it offers nothing
            return []
    return click.argument("name", shell_complete=complete if list_of else None)


def must_exist(obj, what: str):
    """``obj``, or the one-line error that ``what`` does not exist."""
    if obj is None:
        raise click.ClickException(f"{what} does not exist")
    return obj


def read_commands(grp: click.Group, kind: str, list_of: Callable | None, get_of: Callable,
                  list_table: Callable[[object, bool], str] | None, one_table: Callable[[object, bool], str],
                  list_help: str = "", get_help: str = "", names_of: Callable | None = None) -> None:
    """``list`` (unless ``list_of`` is None) and ``get NAME``: the read
    commands every kind has, -o included. ``list_of(client)``,
    ``get_of(client, name)`` (None: it does not exist); the shell completes
    NAME from ``names_of(client)`` (default ``list_of``)."""
    if list_of is not None:
        @grp.command("list", help=list_help or f"List {kind}s.")
        @output_option
        def list_(output):
            emit(list_of(client()), list_table)

    @grp.command("get", help=get_help or f"Show one {kind}.")
    @name_argument(names_of or list_of)
    @output_option
    def get(name, output):
        emit(must_exist(get_of(client(), name), f"{kind} '{name}'"), one_table)


def fields_table(obj: dict, wide: bool) -> str:
    return key_values(obj.items())


def delete_and_wait(what: str, get: Callable[[], object], delete: Callable[[], None], wait: bool,
                    timeout: float, show: Callable[[float], str] | None = None) -> None:
    """Delete an object that goes asynchronously (``what``: "image 'x'");
    with ``wait``, until ``get()`` says it is gone."""
    must_exist(get(), what)
    delete()
    if not wait:
        done(f"{what} deleting")
        return
    t0 = time.monotonic()
    wait_until(lambda: get() is None, timeout, f"{what} deleting", show=show)
    done(f"{what} deleted in {time.monotonic() - t0:.1f}s")
