"""The cluster's instance network: its configuration (one znode) and the
compute nodes' subnet claims (cowfleet/zk/subnets.py)."""
from __future__ import annotations

from urllib.parse import urlparse

from cowfleet import network
from cowfleet.models import NetworkConfig, NodeInfo
from cowfleet.service.preconditions import ANY, Precondition
from cowfleet.protocol import ProblemType
from cowfleet.service.problems import conflict, invalid
from cowfleet.service.upsert import create_or_update
from cowfleet.zk import layout, subnets
from cowfleet.zk.connection import read, read_children


def node_ips(zk) -> list[str]:
    """The addresses nodes are reached at: none may sit inside the instance network."""
    out = []
    for node, _ in read_children(zk, layout.NODES, NodeInfo):
        if node.node_ip:
            out.append(node.node_ip)
        host = urlparse(node.address or "").hostname      # the P2P endpoint's host
        if host:
            out.append(host)
    return out


def get(zk) -> dict:
    got = read(zk, layout.NETWORK_CONFIG, NetworkConfig)
    members = set(zk.get_children(layout.NODES))
    claims = sorted(subnets.claims(zk), key=lambda c: c.subnet)
    cfg, version = got if got else (None, -1)
    return {"instance_cidr": cfg.instance_cidr if cfg else None,
            "subnet_prefix": cfg.subnet_prefix if cfg else None,
            "subnets": [{"node": c.node, "subnet": c.subnet, "gateway": str(network.gateway(c.subnet)),
                         "member": c.node in members} for c in claims],
            "etag": str(version)}


def put(zk, spec: dict, pre: Precondition = ANY) -> tuple[dict, bool]:
    errors: dict[str, list[str]] = {}
    for field, message in network.check_config(spec["instance_cidr"], spec["subnet_prefix"], node_ips(zk)):
        errors.setdefault(field, []).append(message)
    if errors:
        raise invalid(errors, "invalid instance network")
    new = NetworkConfig(instance_cidr=spec["instance_cidr"], subnet_prefix=spec["subnet_prefix"])

    def create() -> NetworkConfig:
        zk.create(layout.NETWORK_CONFIG, new.to_bytes())
        return new

    def update(current: NetworkConfig) -> NetworkConfig | None:
        if current == new:
            return None
        claimed = subnets.claims(zk)
        if claimed:
            # addresses of running instances come from these subnets: a new
            # network would strand them (remove the nodes first)
            raise conflict(ProblemType.NETWORK_IN_USE,
                           f"{len(claimed)} compute node(s) hold subnets of {current.instance_cidr}: "
                           "the instance network can change only while no node holds a subnet "
                           "(DELETE /v1/nodes/{name} releases a departed node's)")
        return new

    _, _, created = create_or_update(zk, layout.NETWORK_CONFIG, NetworkConfig, "the instance network",
                                     pre, create, update)
    return get(zk), created
