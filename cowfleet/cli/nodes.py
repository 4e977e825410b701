"""``cowfleet node`` (the agents' nodes) and ``cowfleet network`` (the instance network)."""
from __future__ import annotations

import click

from cowfleet.cli.common import (client, done, emit, fields_table, name_argument, output_option,
                                 read_commands, table, wait_options)


def existing_names(cl) -> list[dict]:
    """What the shell completes NAME from."""
    return cl.nodes()


def nodes_table(nodes: list[dict], wide: bool) -> str:
    headers = ["NAME", "ROLE", "RACK", "LEADER", "HEALTHY", "SUBNET", "ADDRESS"]
    if wide:
        headers += ["CAPACITY", "ALLOCATED", "LAST_SEEN"]
    rows = []
    for n in nodes:
        row = [n["name"], n["role"], n["rack"], "yes" if n["leader"] else "", "yes" if n["healthy"] else "NO",
               n.get("subnet"), n["address"]]
        if wide:
            row += [n.get("capacity"), n.get("allocated"), n.get("last_seen")]
        rows.append(row)
    return table(headers, rows)


@click.group("node")
def node():
    """The agents' compute and storage nodes."""


# the API has no GET /v1/nodes/{name}: one node is found in the list
read_commands(node, "node", existing_names,
              lambda cl, name: next((n for n in cl.nodes() if n["name"] == name), None), nodes_table, fields_table,
              list_help="List nodes (role, rack, leader, health, instance subnet).")


@node.command("remove")
@name_argument(existing_names)
@wait_options("", immediate=True)
@output_option
def remove(name, wait, timeout, output):
    """Remove a departed node for good (releases its instance subnet)."""
    client().remove_node(name)
    done(f"removed node {name}: its instance subnet is free again")


def network_table(n: dict, wide: bool) -> str:
    head = (f"instance network {n['instance_cidr']}, a /{n['subnet_prefix']} per compute node"
            if n["instance_cidr"] else "instance network: not configured (cowfleet network set CIDR)")
    if not n["subnets"]:
        return head
    return head + "\n" + table(["SUBNET", "GATEWAY", "NODE", "MEMBER"],
                               [[c["subnet"], c["gateway"], c["node"], c["member"]] for c in n["subnets"]])


@click.group("network")
def network():
    """The instance network."""


@network.command("get")
@output_option
def network_get(output):
    """The instance CIDR and every compute node's subnet."""
    emit(client().network(), network_table)


@network.command("set")
@click.argument("cidr")
@click.option("--subnet-prefix", type=int, default=24, show_default=True, help="each compute node's subnet length")
@wait_options("", immediate=True)
@output_option
def network_set(cidr, subnet_prefix, wait, timeout, output):
    """Configure the instance network (before nodes claim subnets), e.g. 10.78.0.0/16."""
    n = client().put_network(instance_cidr=cidr, subnet_prefix=subnet_prefix)
    done(f"instance network {n['instance_cidr']}, a /{n['subnet_prefix']} per compute node", n)
