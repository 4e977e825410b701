"""The instance network, as pure functions: subnets of the cluster's instance
CIDR, the addresses inside one, and each instance's MAC.

The design (docs/design.md, "The instance network"): every compute node
claims one subnet of the instance CIDR in ZooKeeper, allocates its
instances' addresses from it itself, and is their gateway on a bridge of its
own; every node routes each peer's subnet via the peer's node address. No L2
across racks, no NAT, no central allocation per instance.
"""
from __future__ import annotations

import hashlib
import ipaddress
from typing import Iterator

# A default for labs that collides with nothing they use: the racks lab's
# nodes are on 10.77.0.0/16, qemu's user-mode network on 10.0.2.0/24, and
# libvirt's default NAT network (never started here) on 192.168.122.0/24.
LAB_INSTANCE_CIDR = "10.78.0.0/16"
DEFAULT_SUBNET_PREFIX = 24
# subnets this small hold almost no instances; /30 would hold one
MAX_SUBNET_PREFIX = 29
FORBIDDEN = (ipaddress.ip_network("192.168.122.0/24"),)   # libvirt's default NAT network


class NetworkError(ValueError):
    pass


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise NetworkError(f"not an IPv4 network in CIDR form (e.g. 10.78.0.0/16): {exc}") from None
    if net.version != 4:
        raise NetworkError("the instance network is IPv4")
    return net


def check_config(instance_cidr: str, subnet_prefix: int, node_ips: list[str] = ()) -> list[tuple[str, str]]:
    """What is wrong with a network configuration: (field, message) pairs."""
    errors = []
    try:
        net = parse_cidr(instance_cidr)
    except NetworkError as exc:
        return [("instance_cidr", str(exc))]
    if not net.prefixlen <= subnet_prefix <= MAX_SUBNET_PREFIX:
        errors.append(("subnet_prefix", f"must be between the CIDR's own length ({net.prefixlen}) "
                                        f"and {MAX_SUBNET_PREFIX}"))
    for bad in FORBIDDEN:
        if net.overlaps(bad):
            errors.append(("instance_cidr", f"overlaps {bad}, libvirt's default NAT network"))
    if net.is_loopback or net.is_multicast or net.is_link_local:
        errors.append(("instance_cidr", "must be a unicast network that is not loopback or link-local"))
    for ip in node_ips:
        try:
            if ipaddress.ip_address(ip) in net:
                errors.append(("instance_cidr", f"overlaps the node network: node address {ip} is inside it"))
                break
        except ValueError:
            continue
    return errors


def subnets(instance_cidr: str, prefix: int) -> Iterator[ipaddress.IPv4Network]:
    return parse_cidr(instance_cidr).subnets(new_prefix=prefix)


def gateway(subnet: str) -> ipaddress.IPv4Address:
    """The node's own address on its instance bridge: the subnet's first host."""
    return next(ipaddress.ip_network(subnet).hosts())


def host_addresses(subnet: str) -> list[str]:
    """The addresses instances may get: every host address but the gateway."""
    hosts = list(ipaddress.ip_network(subnet).hosts())
    return [str(h) for h in hosts[1:]]


def mac_for(instance_id: str) -> str:
    """A unique, stable MAC per instance: locally administered (bit 1 of the
    first octet set), unicast, 40 bits of the id's SHA-256. Distinct ids
    collide with probability ~n^2/2^41 (10,000 instances: 5e-5); only two
    instances on one bridge colliding would matter, and nothing checks for it."""
    digest = hashlib.sha256(instance_id.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def instance_hostname(instance_id: str) -> str:
    """The guest's host name: its instance id, a DNS label of at most 63
    characters. An id longer than that (a group name of 57-63 characters,
    then ``-`` and 6 hex digits) keeps its unique tail and loses the end of
    its group name: cutting the tail off gave every instance of such a
    group the same host name."""
    if len(instance_id) <= 63:
        return instance_id
    head, _, tail = instance_id.rpartition("-")
    if not head or len(tail) > 16:
        return instance_id[:63].rstrip("-")
    return f"{head[:62 - len(tail)].rstrip('-')}-{tail}"
