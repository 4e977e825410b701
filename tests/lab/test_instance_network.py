"""The routed instance network between nodes, without VMs: each compute node
keeps its bridge (the gateway of the subnet its membership names) and a
route to every peer's subnet via the peer's node address, and forwards; an
"instance" behind a rack-1 compute node reaches one behind a rack-2 node.

The first checks are testinfra's (racks lab or Vagrant: see conftest.py);
the reachability scenario makes namespaces of its own, so it runs on the
racks lab only. (The racks lab's ``down`` leaving no bridge or route is
checked in test_racks.py, on the same session lab.)"""
from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import sys

import pytest

from cowfleet.agents.compute.network import ROUTE_PROTO, bridge_name
from cowfleet.lab import components as c
from cowfleet.lab import netns
from tests.lab.conftest import SSH_CONFIG
from tests.helpers import wait_until

pytestmark = pytest.mark.lab

INSTANCE_CIDR = ipaddress.ip_network("10.78.0.0/16")

# every compute membership record and subnet claim, read on the node itself
# with the node's own ZooKeeper connection string (the cluster's chroot)
READ_MEMBERSHIP = """
import json
from cowfleet.zk.connection import connect
zk = connect(%r, secret=open(%r, 'rb').read().strip())
out = {}
for name in zk.get_children('/cowfleet/nodes'):
    rec = json.loads(zk.get('/cowfleet/nodes/' + name)[0])
    if rec.get('role') == 'compute':
        claim = zk.exists('/cowfleet/subnet-claims/' + name) and json.loads(zk.get('/cowfleet/subnet-claims/' + name)[0])
        out[name] = dict(subnet=rec.get('subnet'), node_ip=rec.get('node_ip'), claim=(claim or {}).get('subnet'))
zk.stop()
print(json.dumps(out))
"""


def memberships(lab_node) -> dict[str, dict]:
    env = lab_node.env()
    python = lab_node.env("compute.env")["COWFLEET_PYTHON"]
    secret = lab_node.env("compute.env")["COWFLEET_SECRET_FILE"]
    out = lab_node.host.check_output("%s -c %s", python, READ_MEMBERSHIP % (env["COWFLEET_ZK"], secret))
    return json.loads(out)


def all_subnets(lab_node) -> dict[str, dict]:
    """The compute memberships, once every one of them names its subnet."""
    def complete():
        got = memberships(lab_node)
        return got if got and all(r["subnet"] for r in got.values()) else None
    return wait_until(complete, 30, "every compute node's membership to name its subnet", interval=1)


def skip_without_bridge(lab_node) -> None:
    """A compute node whose agent keeps its bridge and routes in memory only
    (--hypervisor fake without --node-network linux) has none to check. Only
    a Vagrant lab set up by hand may be so: in the racks lab (what CI runs)
    it is a fault, so it fails there instead of skipping."""
    args = lab_node.env("compute.env").get("AGENT_ARGS", "")
    fake = "--hypervisor fake" in args and "--node-network linux" not in args
    assert not (fake and not SSH_CONFIG), f"the racks lab's compute agents must keep real bridges: {args}"
    if fake:
        pytest.skip("this Vagrant node's agent keeps a fake node network (no bridge, no routes)")


def our_routes(host) -> dict[str, str]:
    out = host.check_output(f"ip -4 route show proto {ROUTE_PROTO}")
    routes = {}
    for line in out.splitlines():
        words = line.split()
        if "via" in words:
            routes[words[0]] = words[words.index("via") + 1]
    return routes


@pytest.mark.roles("compute")
def test_bridge_holds_the_gateway_of_the_subnet_its_membership_names(lab_node):
    skip_without_bridge(lab_node)
    me = lab_node.env()["COWFLEET_NODE"]
    records = all_subnets(lab_node)
    subnets = [ipaddress.ip_network(r["subnet"]) for r in records.values()]
    assert len(set(subnets)) == len(subnets), f"two nodes share a subnet: {records}"
    assert all(s.subnet_of(INSTANCE_CIDR) for s in subnets), records
    mine = records[me]
    assert mine["claim"] == mine["subnet"], "membership and subnet claim agree"
    assert mine["node_ip"] == lab_node.env()["COWFLEET_ADDR"]
    subnet = ipaddress.ip_network(mine["subnet"])
    gateway = f"{next(subnet.hosts())}/{subnet.prefixlen}"
    bridge = bridge_name(me)
    addrs = lab_node.host.check_output(f"ip -o -4 addr show dev {bridge}")
    assert [w for line in addrs.splitlines() for w in line.split()[3:4]] == [gateway], addrs
    flags = lab_node.host.check_output(f"ip -o link show dev {bridge}").split("<", 1)[1].split(">", 1)[0]
    assert "UP" in flags.split(","), flags          # administratively up (no port yet: no carrier)
    assert lab_node.host.file("/proc/sys/net/ipv4/ip_forward").content_string.strip() == "1"


@pytest.mark.roles("compute")
def test_routes_to_every_peer_subnet_via_its_node_address(lab_node):
    skip_without_bridge(lab_node)
    me = lab_node.env()["COWFLEET_NODE"]
    records = all_subnets(lab_node)
    want = {r["subnet"]: r["node_ip"] for name, r in records.items() if name != me}
    assert want and all(ipaddress.ip_address(v) in ipaddress.ip_network("10.77.0.0/16") for v in want.values()), want
    wait_until(lambda: our_routes(lab_node.host) == want, 30, f"routes {want}", interval=1)
    assert records[me]["subnet"] not in our_routes(lab_node.host), "no route to its own subnet"


# -- an instance behind rack 1 reaches one behind rack 2 (racks lab only) -------

@pytest.fixture
def instance_hosts(racks_lab):
    """make(short): a namespace of this test's own, its eth0 a veth whose
    peer is a port of compute node ``short``'s bridge, with the last address
    of that node's subnet and a default route via the gateway; removed
    (with its veth and its processes) whatever happens."""
    if racks_lab is None:           # only against Vagrant (SSH_CONFIG): CI runs the racks lab
        pytest.skip("makes namespaces: the racks lab only")
    made = []

    def make(short: str, subnet: str) -> tuple[str, str]:
        node = racks_lab.node(short)
        net = ipaddress.ip_network(subnet)
        addr, gateway = str(list(net.hosts())[-1]), str(next(net.hosts()))
        name = f"cfi-{secrets.token_hex(3)}-{short}"
        port = f"cfv-{name[4:10]}"
        netns.ip("netns", "add", name)
        made.append(name)
        netns.ip("-n", name, "link", "set", "lo", "up")
        netns.ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", node.netns)
        netns.ip("-n", node.netns, "link", "set", port, "master", bridge_name(node.name), "up")
        netns.ip("-n", name, "addr", "add", f"{addr}/{net.prefixlen}", "dev", "eth0")
        netns.ip("-n", name, "link", "set", "eth0", "up")
        netns.ip("-n", name, "route", "add", "default", "via", gateway)
        return name, addr
    yield make
    for name in made:
        for pid in netns.pids(name):
            c.stop_pid(pid, timeout=5, group=False)
        netns.ip("netns", "del", name, check=False)      # its veth goes with it
    assert not [n for n in made if netns.exists(n)]


def test_an_instance_in_rack_1_reaches_one_in_rack_2(racks_lab, instance_hosts):
    lab = racks_lab
    a, b = lab.node("r1-c1"), lab.node("r2-c1")

    def subnets():
        got = zk_memberships(lab)
        return got if all(got.get(n.name, {}).get("subnet") for n in (a, b)) else None
    records = wait_until(subnets, 30, "subnets of r1-c1 and r2-c1", interval=1)
    for n, peer in ((a, b), (b, a)):        # both ways: the answer comes back the other way
        subnet = records[peer.name]["subnet"]
        wait_until(lambda: routes_in(n.netns).get(subnet) == peer.addr, 30,
                   f"{n.short}'s route to {peer.short}'s subnet {subnet}", interval=1)
    ns_a, addr_a = instance_hosts("r1-c1", records[a.name]["subnet"])
    ns_b, addr_b = instance_hosts("r2-c1", records[b.name]["subnet"])
    subprocess.Popen(["ip", "netns", "exec", ns_b, sys.executable, "-m", "http.server", "8000", "--bind", addr_b],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_until(lambda: serving(ns_b, addr_b), 20, "the rack-2 instance's web server")
    answer = netns.ask(ns_a, addr_b, 8000, b"GET / HTTP/1.0\r\n\r\n", timeout=5)
    assert answer.startswith(b"HTTP/1.0 200"), answer[:200]
    # the way there: the rack-1 instance's gateway, r1-c1's route via r2-c1, r2-c1's bridge
    assert f"via {next(ipaddress.ip_network(records[a.name]['subnet']).hosts())} " in \
        netns.ip("-n", ns_a, "route", "get", addr_b)
    assert f"via {b.addr} " in netns.ip("-n", a.netns, "route", "get", addr_b)
    assert f"dev {bridge_name(b.name)} " in netns.ip("-n", b.netns, "route", "get", addr_b)


def serving(ns: str, addr: str) -> bool:
    try:
        netns.connect(ns, addr, 8000, timeout=1).close()
        return True
    except OSError:
        return False


def zk_memberships(lab) -> dict[str, dict]:
    """The compute memberships, read from inside the service's namespace."""
    svc = lab.nodes("service")[0]
    out = subprocess.run(["ip", "netns", "exec", svc.netns, sys.executable, "-c", READ_MEMBERSHIP % (lab.state.zk, str(lab.secret_file))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def routes_in(ns: str) -> dict[str, str]:
    """A namespace's proto-207 routes: subnet -> next hop."""
    routes = {}
    for line in netns.ip("-n", ns, "-4", "route", "show", "proto", ROUTE_PROTO).splitlines():
        words = line.split()
        if "via" in words:
            routes[words[0]] = words[words.index("via") + 1]
    return routes
