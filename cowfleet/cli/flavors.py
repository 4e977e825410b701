"""``cowfleet flavor``: instance sizes."""
from __future__ import annotations

import click

from cowfleet.cli.common import (client, done, fields_table, must_exist, name_argument, output_option,
                                 read_commands, table, wait_options)
from cowfleet.client import ApiError, seg


def existing_names(cl) -> list[dict]:
    """What the shell completes NAME from."""
    return cl.list_flavors()


def flavors_table(flavors: list[dict], wide: bool) -> str:
    headers = ["NAME", "VCPUS", "MEMORY_MIB", "DISK_GIB"] + (["ETAG"] if wide else [])
    return table(headers, [[f["name"], f["vcpus"], f["memory_mib"], f["disk_gib"]] + ([f["etag"]] if wide else [])
                           for f in flavors], right=("VCPUS", "MEMORY_MIB", "DISK_GIB"))


@click.group("flavor")
def flavor():
    """Flavors: instance sizes (small, medium and large are built in)."""


read_commands(flavor, "flavor", existing_names, lambda cl, name: cl.get_flavor(name),
              flavors_table, fields_table)


@flavor.command("create")
@click.argument("name")
@click.option("--vcpus", type=click.IntRange(min=1), required=True)
@click.option("--memory-mib", type=click.IntRange(min=1), required=True)
@click.option("--disk-gib", type=click.IntRange(min=1), default=1, show_default=True)
@wait_options("", immediate=True)
@output_option
def create(name, vcpus, memory_mib, disk_gib, wait, timeout, output):
    """Create a flavor (fails if it exists: a flavor in use never changes)."""
    try:
        f = client().request("PUT", f"/v1/flavors/{seg(name)}",
                             {"vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": disk_gib},
                             headers={"If-None-Match": "*"}).json()
    except ApiError as exc:
        if exc.status == 412:
            raise click.ClickException(f"flavor '{name}' exists")
        raise
    done(f"flavor {name} created: {vcpus} vCPU, {memory_mib} MiB, {disk_gib} GiB", f)


@flavor.command("delete")
@name_argument(existing_names)
@wait_options("", immediate=True)
@output_option
def delete(name, wait, timeout, output):
    """Delete a flavor (refused while a group uses it, and for the built-in ones)."""
    cl = client()
    must_exist(cl.get_flavor(name), f"flavor '{name}'")
    cl.delete_flavor(name)
    done(f"deleted flavor {name}")
