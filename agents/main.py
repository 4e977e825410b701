"""``cowfleet-agent``: one node agent (compute or storage)."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from cowfleet.agents.compute import virt_type
from cowfleet.agents.compute.agent import ComputeAgent
from cowfleet.agents.compute.hypervisor import FakeHypervisor, LibvirtHypervisor
from cowfleet.agents.storage.agent import StorageAgent
from cowfleet.agents.storage.exporter import FakeExporter
from cowfleet.agents.storage.tgt import TgtExporter
from cowfleet.config import AGENT_ENVIRONMENT, SecretError, cluster_secret, environment_help
from cowfleet.names import valid_name
from cowfleet.network import LAB_INSTANCE_CIDR


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="cowfleet-agent", description="Run one cowfleet node agent.",
                                epilog=environment_help(AGENT_ENVIRONMENT),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", required=True, choices=["compute", "storage"])
    p.add_argument("--rack", required=True, help="the rack this node belongs to")
    p.add_argument("--zk", required=True,
                   help="ZooKeeper connection string listing every server, optional /chroot")
    p.add_argument("--name", help="node name (default: HOSTNAME-ROLE)")
    p.add_argument("--state-dir", help="where overlays, consoles or masters live "
                   "(default: /var/lib/cowfleet/NAME)")
    p.add_argument("--listen", default="127.0.0.1:0", help="P2P endpoint HOST:PORT (port 0: any free)")
    p.add_argument("--iscsi-portal", help="storage: the HOST:PORT at which compute nodes reach this "
                   "machine's tgtd (default: the --listen host, port 3260)")
    p.add_argument("--exporter", choices=["tgt", "fake"], default="tgt",
                   help="storage: who exports the masters over iSCSI: the machine's tgtd, or fake "
                   "(targets in memory, nothing can attach them: for control-plane labs without VMs)")
    p.add_argument("--libvirt-uri", default="qemu:///system")
    p.add_argument("--virt-type", choices=["auto", "kvm", "qemu"], default="auto",
                   help="libvirt domain type; auto boots a probe guest to see if KVM really works")
    p.add_argument("--hypervisor", choices=["libvirt", "fake"], default="libvirt",
                   help="fake: in-memory domains, for scale tests of the control plane")
    p.add_argument("--network", choices=["routed", "user", "none"], default="routed",
                   help="guest networking: routed (an address on the node's instance subnet, on its "
                   "bridge; the default), qemu user-mode, or none")
    p.add_argument("--node-network", choices=["linux", "fake"],
                   help="routed: who keeps the bridge and routes (default: linux, fake with --hypervisor fake)")
    p.add_argument("--bridge", help="routed: the instance bridge's name (default: cfbr-<hash of the node name>)")
    p.add_argument("--node-address", help="routed: this node's address, the next hop peers use for its "
                   "instance subnet (default: the --listen host)")
    p.add_argument("--instance-cidr", default=None,
                   help="routed: the instance network to configure if the cluster has none yet "
                   "(default 10.78.0.0/16; an operator sets it with PUT /v1/network)")
    p.add_argument("--no-seed", action="store_true",
                   help="attach no NoCloud seed (identity, network-config, user-data) to instances")
    p.add_argument("--vcpus", type=int, help="vCPUs this node offers (default: 8 per core)")
    p.add_argument("--memory-mib", type=int, help="memory this node offers (default: host memory - 1 GiB)")
    p.add_argument("--warm-spares", type=int, default=int(os.environ.get("COWFLEET_WARM_SPARES") or 0),
                   metavar="N", help="compute: warm-clone spares kept restored and paused per template, in "
                   "capacity no instance uses (default 0, or COWFLEET_WARM_SPARES)")
    p.add_argument("--log-level", default=os.environ.get("COWFLEET_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    name = args.name or f"{socket.gethostname().split('.')[0].lower()}-{args.role}"
    if not valid_name(name):
        print(f"cowfleet-agent: invalid node name '{name}': use a DNS label", file=sys.stderr)
        return 2
    try:
        cluster_secret()          # a secret file configured but unusable: say so in one line, not mid-start
    except SecretError as exc:
        print(f"cowfleet-agent: {exc}", file=sys.stderr)
        return 2
    state_dir = args.state_dir or f"/var/lib/cowfleet/{name}"
    common = dict(name=name, rack=args.rack, zk_hosts=args.zk, state_dir=state_dir, listen=args.listen)
    if args.role == "compute":
        if args.hypervisor == "fake":
            hyper = FakeHypervisor()
        else:
            vt = virt_type.detect(state_dir) if args.virt_type == "auto" else args.virt_type
            hyper = LibvirtHypervisor(args.libvirt_uri, vt)
        agent = ComputeAgent(hypervisor=hyper, vcpus=args.vcpus, memory_mib=args.memory_mib,
                             network=args.network, node_network=args.node_network, bridge=args.bridge,
                             node_ip=args.node_address, instance_cidr=args.instance_cidr or LAB_INSTANCE_CIDR,
                             seeds=not args.no_seed, warm_spares=max(0, args.warm_spares),
                             **common)
    else:
        host = args.listen.rpartition(":")[0]
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        exporter = (FakeExporter if args.exporter == "fake" else TgtExporter)(name)
        agent = StorageAgent(portal=args.iscsi_portal or f"{host}:3260", exporter=exporter, **common)
    agent.install_signal_handlers()
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
