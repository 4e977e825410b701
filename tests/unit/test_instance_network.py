"""The instance network's pure parts: configuration checks, subnets, MACs,
the address pool, and NoCloud seeds (built and read back)."""
from __future__ import annotations

import ipaddress
import threading

import pytest

from cowfleet import network
from cowfleet.agents.compute.instance_network import InstanceNetwork
from cowfleet.agents.compute.network import AddressesExhausted, AddressPool, FakeNodeNetwork, bridge_name
from cowfleet.agents.compute.seed import SeedData, SeedStore, build_seed, read_seed
from cowfleet.models import NodeInfo


# -- configuration -----------------------------------------------------------

def test_lab_default_is_valid_and_avoids_the_lab_node_network():
    assert network.check_config(network.LAB_INSTANCE_CIDR, 24, ["10.77.1.11", "127.0.0.1"]) == []


@pytest.mark.parametrize("cidr,prefix,field,words", [
    ("10.78.0.0/33", 24, "instance_cidr", "CIDR"),
    ("10.78.0.1/16", 24, "instance_cidr", "CIDR"),            # host bits set
    ("fd00::/64", 80, "instance_cidr", "IPv4"),
    ("nonsense", 24, "instance_cidr", "CIDR"),
    ("192.168.0.0/16", 24, "instance_cidr", "192.168.122.0/24"),
    ("10.78.0.0/16", 8, "subnet_prefix", "between"),
    ("10.78.0.0/16", 31, "subnet_prefix", "between"),
    ("127.0.0.0/8", 24, "instance_cidr", "loopback"),
])
def test_bad_configuration_names_the_field(cidr, prefix, field, words):
    errors = network.check_config(cidr, prefix)
    assert errors and errors[0][0] == field and words in errors[0][1]


def test_overlap_with_a_node_address_is_refused():
    errors = network.check_config("10.77.0.0/16", 24, ["10.77.1.11"])
    assert errors == [("instance_cidr", "overlaps the node network: node address 10.77.1.11 is inside it")]


def test_subnets_gateway_and_hosts():
    subs = list(network.subnets("10.78.0.0/22", 24))
    assert [str(s) for s in subs] == ["10.78.0.0/24", "10.78.1.0/24", "10.78.2.0/24", "10.78.3.0/24"]
    assert str(network.gateway("10.78.1.0/24")) == "10.78.1.1"
    hosts = network.host_addresses("10.78.1.0/24")
    assert hosts[0] == "10.78.1.2" and hosts[-1] == "10.78.1.254" and len(hosts) == 253


def test_mac_is_stable_unique_unicast_and_locally_administered():
    macs = {network.mac_for(f"web-{i:06x}") for i in range(5000)}
    assert len(macs) == 5000
    mac = network.mac_for("web-0a1b2c")
    assert mac == network.mac_for("web-0a1b2c")
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b1          # local, unicast
    assert len(mac.split(":")) == 6


def test_hostname_is_a_dns_label():
    assert network.instance_hostname("web-0a1b2c") == "web-0a1b2c"
    long = "a" * 62 + "-0a1b2c"
    assert len(network.instance_hostname(long)) <= 63 and not network.instance_hostname(long).endswith("-")
    # the longest group name: each instance keeps its own host name (its tail)
    group = "g" * 55 + "-" + "x" * 7
    names = {network.instance_hostname(f"{group}-{t}") for t in ("0a1b2c", "0a1b2d", "ffffff")}
    assert len(names) == 3 and all(len(n) <= 63 and n.startswith("g" * 55) for n in names)
    assert network.instance_hostname(f"{group}-0a1b2c").endswith("-0a1b2c")


def test_bridge_names_fit_linux_and_differ_per_node():
    names = {bridge_name(f"lab-compute-{i}") for i in range(100)}
    assert len(names) == 100 and all(len(n) <= 15 for n in names)


# -- the address pool -----------------------------------------------------------

def test_pool_hands_out_lowest_free_and_reuses_released():
    pool = AddressPool("10.78.5.0/29")                 # .2 .. .6
    got = [pool.allocate(f"i{i}") for i in range(5)]
    assert got == ["10.78.5.2", "10.78.5.3", "10.78.5.4", "10.78.5.5", "10.78.5.6"]
    assert pool.allocate("i1") == "10.78.5.3"          # idempotent per id
    with pytest.raises(AddressesExhausted, match="no free address left in 10.78.5.0/29"):
        pool.allocate("i9")
    assert pool.release("i2") == "10.78.5.4"
    assert pool.allocate("i9") == "10.78.5.4"


def test_pool_load_keeps_earlier_allocations_and_refuses_conflicts():
    pool = AddressPool("10.78.5.0/24")
    assert pool.load("a", "10.78.5.2")
    assert pool.load("a", "10.78.5.2")
    assert not pool.load("b", "10.78.5.2")             # another id has it
    assert not pool.load("c", "10.78.6.2")             # another subnet (the node claimed anew)
    assert not pool.load("d", "10.78.5.1")             # the gateway
    assert not pool.load("e", "garbage")
    assert pool.allocate("b") == "10.78.5.3"
    assert pool.in_use() == {"a": "10.78.5.2", "b": "10.78.5.3"}


def test_pool_concurrent_allocations_never_collide():
    pool = AddressPool("10.78.0.0/20")
    out: dict[str, str] = {}
    lock = threading.Lock()

    def work(k):
        for i in range(200):
            a = pool.allocate(f"t{k}-{i}")
            with lock:
                out[f"t{k}-{i}"] = a
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 1600 and len(set(out.values())) == 1600


def test_pool_1000_cycles_leak_nothing():
    pool = AddressPool("10.78.5.0/28")
    for i in range(1000):
        pool.allocate(f"x{i}")
        if i % 3 == 0:
            pool.allocate(f"y{i}")
            pool.release(f"y{i}")
        pool.release(f"x{i}")
    assert pool.in_use() == {}
    assert [pool.allocate(f"z{i}") for i in range(13)][-1] == "10.78.5.14"


# -- routes ------------------------------------------------------------------------

def _node(name, subnet, ip):
    return NodeInfo(name=name, role="compute", rack="r", subnet=subnet, node_ip=ip)


class _Peers:
    """The part of agents/handshake.PeerDirectory the route sync uses."""
    def __init__(self, nodes):
        self.list, self.version, self.forgotten = nodes, 0, []

    def nodes(self, role):
        return list(self.list)

    def changed_since(self, version):
        return version != self.version

    def forget(self, name):
        self.forgotten.append(name)
        self.version += 1


def test_routes_are_synced_again_only_when_a_peer_changed(monkeypatch):
    """Every round routed every peer again before: O(peers^2) for the
    cluster, most of 2 cores for 1,000 idle fake agents."""
    import logging

    from cowfleet.agents.compute import agent as agent_module
    from cowfleet.agents.compute.agent import ComputeAgent
    net = FakeNodeNetwork("cfbr-test")
    inet = InstanceNetwork(zk=None, node="me", node_ip="10.77.1.11", net=net)
    inet.loaded, inet.pool = True, AddressPool("10.78.1.0/24")
    monkeypatch.setattr(InstanceNetwork, "ready", property(lambda self: True))
    syncs = []
    real = inet.sync_routes
    inet.sync_routes = lambda peers: syncs.append(len(peers)) or real(peers)
    agent = ComputeAgent.__new__(ComputeAgent)
    agent.instnet, agent.log = inet, logging.getLogger("test")
    agent.inflight_lock, agent.inflight, agent._routes_synced = threading.Lock(), {}, (-1, 0.0)
    agent.peers = _Peers([_node("p1", "10.78.2.0/24", "10.77.2.11")])
    for _ in range(3):
        agent._reconcile_network({})
    assert syncs == [1] and net.routes() == {"10.78.2.0/24": "10.77.2.11"}
    agent.peers.list.append(_node("p2", "10.78.3.0/24", "10.77.3.11"))
    agent.peers.version += 1                        # a peer joined
    agent._reconcile_network({})
    agent._reconcile_network({})
    assert syncs == [1, 2] and len(net.routes()) == 2
    agent.peers.list.append(_node("p3", None, "10.77.4.11"))   # no subnet claimed yet: asked again each round
    agent.peers.version += 1
    agent._reconcile_network({})
    agent._reconcile_network({})
    assert syncs == [1, 2, 3, 3] and agent.peers.forgotten == ["p3", "p3"]
    agent.peers.list.pop()
    agent._reconcile_network({})
    agent._reconcile_network({})
    assert syncs == [1, 2, 3, 3, 2]
    monkeypatch.setattr(agent_module, "ROUTES_RESYNC_SECONDS", 0.0)   # and again after a while regardless
    agent._reconcile_network({})
    assert syncs == [1, 2, 3, 3, 2, 2]


def test_routes_go_to_peers_node_addresses_only():
    net = FakeNodeNetwork("cfbr-test")
    inet = InstanceNetwork(zk=None, node="me", node_ip="10.77.1.11", net=net)
    errors = inet.sync_routes([_node("me", "10.78.1.0/24", "10.77.1.11"),
                               _node("p1", "10.78.2.0/24", "10.77.2.11"),
                               _node("p2", None, "10.77.2.12"),                 # no subnet yet
                               _node("p3", "10.78.4.0/24", "127.0.0.1"),        # same host (lab)
                               _node("p4", "10.78.5.0/24", "10.77.1.11")])      # same address
    assert errors == [] and net.routes() == {"10.78.2.0/24": "10.77.2.11"}
    inet.sync_routes([])
    assert net.routes() == {}


# -- seeds -------------------------------------------------------------------------

def _seed(**over):
    base = dict(instance_id="web-0a1b2c", hostname="web-0a1b2c", mac="02:aa:bb:cc:dd:ee",
                address="10.78.5.2/24", gateway="10.78.5.1")
    base.update(over)
    return SeedData(**base)


def test_seed_volume_is_cidata_with_the_three_files(tmp_path):
    path = build_seed(_seed(user_data="#!/bin/sh\necho hi\n"), tmp_path / "s.iso")
    files = read_seed(path)
    assert files["label"] == b"cidata"
    assert b'instance-id: "web-0a1b2c"' in files["meta-data"]
    assert b'local-hostname: "web-0a1b2c"' in files["meta-data"]
    assert files["user-data"] == b"#!/bin/sh\necho hi\n"          # verbatim
    nc = files["network-config"].decode()
    assert "version: 2" in nc and 'macaddress: "02:aa:bb:cc:dd:ee"' in nc
    assert '- "10.78.5.2/24"' in nc and 'via: "10.78.5.1"' in nc
    assert not list(tmp_path.glob("*.partial"))


def test_seed_is_valid_yaml_for_cloud_init():
    import yaml          # PyYAML: the parser cloud-init itself uses
    d = _seed(ssh_authorized_keys=("ssh-ed25519 AAAAC3Nza k@h",), hostname='we"ird', random_seed="q83vEjRWeJA=")
    meta = yaml.safe_load(d.meta_data())
    assert meta == {"instance-id": "web-0a1b2c", "local-hostname": 'we"ird', "random_seed": "q83vEjRWeJA=",
                    "public-keys": ["ssh-ed25519 AAAAC3Nza k@h"]}
    nc = yaml.safe_load(d.network_config())
    eth = nc["ethernets"]["eth0"]
    assert nc["version"] == 2 and eth["match"]["macaddress"] == "02:aa:bb:cc:dd:ee"
    assert eth["addresses"] == ["10.78.5.2/24"] and eth["routes"] == [{"to": "0.0.0.0/0", "via": "10.78.5.1"}]
    assert yaml.safe_load(d.user_data_text()) == {"ssh_authorized_keys": ["ssh-ed25519 AAAAC3Nza k@h"]}


def test_keys_with_user_data_go_to_meta_data_and_user_data_stays_verbatim():
    d = _seed(user_data="#cloud-config\npackages: [nginx]\n", ssh_authorized_keys=("ssh-rsa AAAAB3 k",))
    assert d.user_data_text() == "#cloud-config\npackages: [nginx]\n"
    assert '"ssh-rsa AAAAB3 k"' in d.meta_data()


def test_no_user_data_no_keys_is_empty_user_data():
    assert _seed().user_data_text() == ""


def test_without_an_address_the_nic_asks_dhcp():
    nc = _seed(address=None, gateway=None).network_config()
    assert "dhcp4: true" in nc and "addresses" not in nc


def test_seed_store_lists_and_removes(tmp_path):
    store = SeedStore(tmp_path / "seeds")
    p = store.create("web", "web-0a1b2c", _seed())
    assert p.exists() and oct(p.stat().st_mode & 0o777) == "0o644"
    assert store.list() == {"web-0a1b2c": ("web", p)}
    assert store.remove("web", "web-0a1b2c") and not p.exists() and store.list() == {}
    assert not (tmp_path / "seeds" / "web").exists()


def test_addresses_are_inside_the_subnet():
    pool = AddressPool("10.78.9.0/24")
    net = ipaddress.ip_network("10.78.9.0/24")
    assert all(ipaddress.ip_address(pool.allocate(str(i))) in net for i in range(253))
