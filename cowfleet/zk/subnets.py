"""Claims on subnets of the instance CIDR: one per compute node, taken with
one atomic ZooKeeper transaction, kept until an operator removes the node.

A claim is two znodes created together: ``/subnets/<subnet>`` (so no two
nodes can hold one subnet) and ``/subnet-claims/<node>`` (so a restarted
agent finds its own claim in one read). Both are persistent, not ephemeral:
an agent restart or a ZooKeeper session blip keeps the node's subnet, and
with it every address its running instances have.
"""
from __future__ import annotations

import random

from kazoo.exceptions import NoNodeError, NodeExistsError

from cowfleet import network
from cowfleet.models import NetworkConfig, SubnetClaim
from cowfleet.zk import layout
from cowfleet.zk.connection import read, read_children


class SubnetsExhausted(RuntimeError):
    pass


def config(zk) -> NetworkConfig | None:
    got = read(zk, layout.NETWORK_CONFIG, NetworkConfig)
    return got[0] if got else None


def set_config(zk, cfg: NetworkConfig) -> None:
    """Create or replace the network configuration (callers check it first)."""
    try:
        zk.create(layout.NETWORK_CONFIG, cfg.to_bytes(), makepath=True)
    except NodeExistsError:
        zk.set(layout.NETWORK_CONFIG, cfg.to_bytes())


def claim_of(zk, node: str) -> SubnetClaim | None:
    got = read(zk, layout.subnet_claim(node), SubnetClaim)
    return got[0] if got else None


def claims(zk) -> list[SubnetClaim]:
    return [c for c, _ in read_children(zk, layout.SUBNET_CLAIMS, SubnetClaim)]


def claim(zk, node: str, cfg: NetworkConfig) -> SubnetClaim:
    """The node's subnet: its existing claim, or a free subnet claimed now.

    Candidates are tried in an order seeded by the node's name, so many
    nodes claiming at once rarely try the same subnet; a collision costs one
    failed transaction and the next candidate.
    """
    existing = claim_of(zk, node)
    if existing is not None:
        return existing
    taken = set(zk.get_children(layout.SUBNETS))
    candidates = [str(s) for s in network.subnets(cfg.instance_cidr, cfg.subnet_prefix)]
    free = [s for s in candidates if s.replace("/", "-") not in taken]
    random.Random(node).shuffle(free)
    for subnet in free:
        record = SubnetClaim(node=node, subnet=subnet).to_bytes()
        tx = zk.transaction()
        tx.create(layout.subnet(subnet), record)
        tx.create(layout.subnet_claim(node), record)
        results = tx.commit()
        if not any(isinstance(r, Exception) for r in results):
            return SubnetClaim.from_bytes(record)
        existing = claim_of(zk, node)       # another incarnation of this node won
        if existing is not None:
            return existing
    raise SubnetsExhausted(f"no free /{cfg.subnet_prefix} left in {cfg.instance_cidr} "
                           f"({len(candidates)} subnets, all claimed)")


def release(zk, node: str) -> SubnetClaim | None:
    """Give the node's subnet back (the operator removed the node)."""
    got = read(zk, layout.subnet_claim(node), SubnetClaim)
    if got is None:
        return None
    rec, version = got
    tx = zk.transaction()
    tx.delete(layout.subnet_claim(node), version=version)
    if zk.exists(layout.subnet(rec.subnet)):
        tx.delete(layout.subnet(rec.subnet))
    results = tx.commit()
    bad = [r for r in results if isinstance(r, Exception) and not isinstance(r, NoNodeError)]
    if bad:
        raise bad[0]
    return rec
