"""``cowfleet token``: API tokens, through the API (``/v1/tokens``, admin role).

Bootstrap: the first admin token of a cluster that has none (no token file)
cannot come from the API. ``--zk HOSTS`` writes ZooKeeper directly instead
(whoever can write the cluster's ZooKeeper is its administrator anyway);
only when asked for, never as a fallback.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

import click

from cowfleet.cli.common import (client, done, emit, fields_table, must_exist, name_argument, note,
                                 output_option, read_commands, table, wait_options)

ROLES = ("admin", "reader")
ZK_HELP = ("bootstrap: write ZooKeeper (HOST:PORT[,...]) directly instead of calling the API, e.g. for a "
           "cluster's first admin token; needs network access to ZooKeeper")
DURATION_RE = re.compile(r"^(\d+)([smhdw]?)\Z")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def existing_names(cl) -> list[dict]:
    """What the shell completes NAME from."""
    return cl.list_tokens()


class AliasGroup(click.Group):
    """Old names still work (``add`` is ``create``, ``revoke`` is ``delete``),
    unlisted in --help."""
    aliases = {"add": "create", "revoke": "delete"}

    def get_command(self, ctx, cmd_name):
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))


def _duration(value: str | None) -> int | None:
    if value is None:
        return None
    m = DURATION_RE.match(value.strip())
    if not m:
        raise click.BadParameter(f"'{value}' is not a duration: N seconds, or Ns, Nm, Nh, Nd, Nw",
                                 param_hint="--ttl")
    if int(m.group(1)) == 0:
        raise click.BadParameter(f"'{value}': a token lives at least 1 second (leave --ttl out: it never expires)",
                                 param_hint="--ttl")
    return int(m.group(1)) * UNITS[m.group(2)]


def tokens_table(tokens: list[dict], wide: bool) -> str:
    headers = ["NAME", "ROLE", "CREATED", "EXPIRES", "LAST_USED"] + (["EXPIRED", "ETAG"] if wide else [])
    rows = [[t["name"], t["role"], t["created_at"], t.get("expires_at") or "never", t.get("last_used") or "never"]
            + ([t["expired"], t["etag"]] if wide else []) for t in tokens]
    return table(headers, rows)


def _zk(hosts: str):
    from cowfleet.zk.connection import connect
    return connect(hosts, timeout=10)


def _with_zk(hosts: str, fn):
    zk = _zk(hosts)
    try:
        return fn(zk)
    finally:
        zk.stop()
        zk.close()


def _zk_view(record) -> dict:
    from cowfleet.models import iso
    return {"name": record.name, "role": record.role, "created_at": iso(record.created_at),
            "expires_at": iso(record.expires_at), "expired": record.expired(), "last_used": iso(record.last_used)}


@click.group("token", cls=AliasGroup)
def token():
    """API tokens (admin role): create, list, get, delete. --zk: bootstrap without the API."""


@token.command("list")
@click.option("--zk", "zk_hosts", metavar="HOSTS", help=ZK_HELP)
@output_option
def list_(zk_hosts, output):
    """List tokens (names, roles, expiry, last use; never the secrets)."""
    if zk_hosts:
        from cowfleet import tokens
        rows = _with_zk(zk_hosts, tokens.list_)
        emit([dict(_zk_view(t), etag=str(v)) for t, v, _ in rows], tokens_table)
        return
    emit(client().list_tokens(), tokens_table)


read_commands(token, "token", None, lambda cl, name: cl.get_token(name), None, fields_table,
              get_help="Show one token (never its secret).", names_of=existing_names)


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="reader", show_default=True)
@click.option("--ttl", help="valid for this long: N seconds, or Ns, Nm, Nh, Nd, Nw (default: no expiry)")
@click.option("--expires-at", metavar="TIME", help="valid until this RFC 3339 time, e.g. 2027-01-01T00:00:00Z")
@click.option("--zk", "zk_hosts", metavar="HOSTS", help=ZK_HELP)
@wait_options("", immediate=True)
@output_option
def create(name, role, ttl, expires_at, zk_hosts, wait, timeout, output):
    """Create a token and print it on stdout: it is shown this once (a DNS-label
    NAME says what it is for, e.g. ci or terraform)."""
    seconds = _duration(ttl)
    if seconds is not None and expires_at:
        raise click.UsageError("give --ttl or --expires-at, not both")
    if zk_hosts:
        t = _bootstrap(name, role, seconds, expires_at, zk_hosts)
    else:
        spec = {"role": role}
        if seconds is not None:
            spec["ttl"] = seconds
        if expires_at:
            spec["expires_at"] = expires_at
        t = client().create_token(name, **spec)
    done(t["token"], t)
    note(f"# token '{name}' ({role}" + (f", expires {t['expires_at']}" if t.get("expires_at") else "")
         + "): shown once; the service keeps only its SHA-256")


def _bootstrap(name: str, role: str, seconds: int | None, expires_at: str | None, hosts: str) -> dict:
    from cowfleet import tokens
    from cowfleet.models import now
    from cowfleet.names import NAME_RE, NAME_RULE     # the API's rule for names
    if not NAME_RE.match(name):
        raise click.BadParameter(NAME_RULE, param_hint="NAME")
    expires = now() + seconds if seconds is not None else None
    if expires_at:
        try:
            when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(f"'{expires_at}' is not an RFC 3339 time", param_hint="--expires-at")
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        expires = when.timestamp()
        if expires <= now():
            raise click.BadParameter("is in the past", param_hint="--expires-at")
    try:
        secret, record = _with_zk(hosts, lambda zk: tokens.create(zk, name, role, expires_at=expires))
    except tokens.TokenExists as exc:
        raise click.ClickException(str(exc))
    return dict(_zk_view(record), etag="0", token=secret)


@token.command("delete")
@name_argument(existing_names)
@click.option("--zk", "zk_hosts", metavar="HOSTS", help=ZK_HELP)
@wait_options("", immediate=True)
@output_option
def delete(name, zk_hosts, wait, timeout, output):
    """Revoke a token: every service worker refuses it within moments."""
    if zk_hosts:
        from cowfleet import tokens
        if not _with_zk(zk_hosts, lambda zk: tokens.revoke(zk, name)):
            raise click.ClickException(f"token '{name}' does not exist")
    else:
        cl = client()
        must_exist(cl.get_token(name), f"token '{name}'")
        cl.delete_token(name)
    done(f"revoked token {name}")
