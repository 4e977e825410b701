"""The compute agent's instance network: the node's subnet claim, its bridge
and routes, and the addresses of its instances (the policy; the I/O is in
``network.py``)."""
from __future__ import annotations

import ipaddress
import logging

from kazoo.exceptions import NoNodeError

from cowfleet import network
from cowfleet.agents.compute.network import AddressPool, NodeNetwork
from cowfleet.models import Instance, NetworkConfig, NodeInfo
from cowfleet.zk import layout, subnets
from cowfleet.zk.connection import create_quietly

log = logging.getLogger(__name__)


class InstanceNetwork:
    def __init__(self, zk, node: str, node_ip: str | None, net: NodeNetwork,
                 default_cidr: str | None = network.LAB_INSTANCE_CIDR):
        self.zk, self.node, self.node_ip, self.net = zk, node, node_ip, net
        self.default_cidr = default_cidr
        self.subnet: str | None = None
        self.pool: AddressPool | None = None
        self.loaded = False            # allocations read back from the instance records
        self.error = "the instance network is not set up yet"

    @property
    def ready(self) -> bool:
        return self.pool is not None

    def setup(self) -> bool:
        """Claim the node's subnet (or find its claim) and bring its bridge up."""
        try:
            cfg = subnets.config(self.zk)
            if cfg is None and self.default_cidr:
                # the first agent of a cluster nobody configured: the default
                # (an operator sets it beforehand with PUT /v1/network)
                create_quietly(self.zk, layout.NETWORK_CONFIG,
                               NetworkConfig(instance_cidr=self.default_cidr).to_bytes())
                cfg = subnets.config(self.zk)
            if cfg is None:
                self.error = "no instance network configured (PUT /v1/network)"
                return False
            problems = network.check_config(cfg.instance_cidr, cfg.subnet_prefix,
                                            [self.node_ip] if self.node_ip else [])
            if problems:
                self.error = f"instance network {cfg.instance_cidr}: {problems[0][1]}"
                return False
            claim = subnets.claim(self.zk, self.node, cfg)
            self.net.setup(claim.subnet)
        except Exception as exc:      # shown on every instance that waits for it
            self.error = f"instance network: {exc}"[:300]
            log.warning("%s: %s", self.node, self.error)
            return False
        if self.subnet != claim.subnet:
            self.subnet, self.pool, self.loaded = claim.subnet, AddressPool(claim.subnet), False
            log.info("%s: instance subnet %s on bridge %s", self.node, claim.subnet, self.net.bridge)
        self.error = ""
        return True

    def load(self, ids_by_group: list[tuple[str, str]]) -> None:
        """Read back the addresses of the node's instances (after a restart)
        before any new one is handed out."""
        pending = [(iid, self.zk.get_async(layout.group_instance(g, iid))) for g, iid in ids_by_group]
        for iid, res in pending:
            try:
                inst = Instance.from_bytes(res.get()[0])
            except NoNodeError:
                continue
            if inst.node == self.node and inst.address:
                self.pool.load(iid, inst.address)
        self.loaded = True

    def allocate(self, inst: Instance) -> str:
        """The instance's address: the one on its record if it is still its
        own, else a new one."""
        if inst.address and self.pool.load(inst.id, inst.address):
            return inst.address
        return self.pool.allocate(inst.id)

    def release(self, instance_id: str) -> None:
        if self.pool is not None:
            self.pool.release(instance_id)

    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    def gateway(self) -> str:
        return str(network.gateway(self.subnet))

    def sync_routes(self, peers: list[NodeInfo]) -> list[str]:
        """Route every peer's subnet via the peer's node address (peers on
        this very host -- same address, or loopback in a one-host lab --
        need no route)."""
        want = {}
        for p in peers:
            if p.name == self.node or not p.subnet or not p.node_ip or p.node_ip == self.node_ip:
                continue
            try:
                if ipaddress.ip_address(p.node_ip).is_loopback:
                    continue
            except ValueError:
                continue
            want[p.subnet] = p.node_ip
        return self.net.sync_routes(want)
