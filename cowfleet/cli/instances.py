"""``cowfleet instance``: one instance of a group; its serial console."""
from __future__ import annotations

import sys
import time

import click

from cowfleet.cli.common import client, emit, fields_table, must_exist, output_option


def group_of(instance_id: str, given: str | None) -> str:
    """An instance id is ``<group>-<6 hex>`` (placement names them so)."""
    if given:
        return given
    group, _, suffix = instance_id.rpartition("-")
    if not group or len(suffix) != 6:
        raise click.BadParameter(f"cannot tell the group of '{instance_id}' from its id: give --group",
                                 param_hint="ID")
    return group


GROUP_OPTION = click.option("--group", help="its group (default: the id without its last '-xxxxxx')")


@click.group("instance")
def instance():
    """Instances of groups."""


@instance.command("get")
@click.argument("instance_id", metavar="ID")
@GROUP_OPTION
@output_option
def get(instance_id, group, output):
    """Show one instance (address, node, state, message), e.g. web-0a1b2c."""
    group = group_of(instance_id, group)
    g = client().get_group(group)
    inst = next((i for i in (g or {}).get("instances", []) if i["id"] == instance_id), None)
    emit(must_exist(inst, f"instance '{instance_id}' of group '{group}'"), fields_table)


@instance.command("console")
@click.argument("instance_id", metavar="ID")
@GROUP_OPTION
@click.option("--tail-bytes", type=click.IntRange(min=0), default=None, help="how much of the end (default 64 KiB)")
@click.option("-f", "--follow", is_flag=True, help="keep printing what the guest prints")
@click.option("--interval", type=float, default=1.0, hidden=True)
def console(instance_id, group, tail_bytes, follow, interval):
    """The tail of an instance's serial console; --follow keeps printing what comes."""
    cl = client()
    group = group_of(instance_id, group)
    text, size = cl.console(group, instance_id, tail_bytes)
    sys.stdout.write(text)
    sys.stdout.flush()
    while follow:
        time.sleep(interval)
        text, new_size = cl.console(group, instance_id, 65536)
        if new_size < size:                      # restarted: a new console
            sys.stdout.write(f"\n--- console restarted ---\n{text}")
        elif new_size > size:
            sys.stdout.write(text[-(new_size - size):] if new_size - size < len(text) else text)
        sys.stdout.flush()
        size = new_size
