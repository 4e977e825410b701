"""Instances people can use, end to end with real VMs in the session lab:
each answers on its own address (the lab node's bridge; the host reaches it)
with its own id, host name and user-data output; its seed carries identity,
network and keys; the console endpoint and the CLI show its boot; bad input
is refused on the field."""
from __future__ import annotations

import base64
import ipaddress
import struct
import subprocess
import sys

import pytest
import requests

from cowfleet.agents.compute.seed import read_seed
from cowfleet.client import ApiError
from cowfleet.guest.builder import READY_MARKER
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

USER_DATA = "#!/bin/sh\necho user-data says hello from $(hostname)\n"


def ssh_key(comment: str) -> str:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


@pytest.fixture
def usable_group(client):
    name = "usable"
    yield name
    try:
        client.delete_group(name)
    except ApiError:
        pass
    wait_until(lambda: client.get_group(name) is None, 120, f"group {name} deleted")


def cli(lab, *args) -> subprocess.CompletedProcess:
    env = {"COWFLEET_ENDPOINT": lab.state.endpoint, "COWFLEET_TOKEN": lab.state.reader_token, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "cowfleet.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_instances_answer_on_their_addresses_with_identity_and_user_data(lab, client, image_demo, usable_group):
    key = ssh_key("alice@laptop")
    client.put_group(usable_group, image="demo", flavor="small", size=2, user_data=USER_DATA,
                     ssh_authorized_keys=[key])
    g = wait_until(lambda: (g := client.get_group(usable_group)) and g["status"]["phase"] == "ready" and g,
                   240, "group usable ready")
    net = client.network()
    node = g["instances"][0]["node"]
    claim = next(c for c in net["subnets"] if c["node"] == node)
    subnet = ipaddress.ip_network(claim["subnet"])
    assert claim["member"] and subnet.subnet_of(ipaddress.ip_network(net["instance_cidr"]))
    addresses = set()
    for inst in g["instances"]:
        addr = inst["address"]
        assert ipaddress.ip_address(addr) in subnet and addr != claim["gateway"]
        addresses.add(addr)
        page = requests.get(f"http://{addr}/", timeout=10).text
        assert f"instance-id: {inst['id']}" in page
        assert f"hostname: {inst['id']}" in page
        assert f"address: {addr}/{subnet.prefixlen}" in page
        assert f"user-data says hello from {inst['id']}" in page
        # the seed on the node: identity, the keys, network-config matched on the MAC
        seed = read_seed(next((lab.dir / "nodes").glob(f"{node}/seeds/{usable_group}/{inst['id']}.iso")))
        assert seed["label"] == b"cidata"
        assert key.encode() in seed["meta-data"]
        assert inst["mac"].encode() in seed["network-config"]
        assert seed["user-data"] == USER_DATA.encode()
        # the console, through the API (reader role) and the CLI
        reader = requests.get(f"{lab.state.endpoint}/v1/instance-groups/{usable_group}/instances/"
                              f"{inst['id']}/console", headers={"Authorization": f"Bearer {lab.state.reader_token}"},
                              timeout=10)
        assert reader.status_code == 200 and reader.headers["Content-Type"].startswith("text/plain")
        assert READY_MARKER in reader.text and "user-data exited 0" in reader.text
        assert int(reader.headers["X-Console-Size"]) >= len(reader.content)
        text, size = client.console(usable_group, inst["id"], 20)
        assert len(text) <= 20 and size >= int(reader.headers["X-Console-Size"])
        out = cli(lab, "instance", "console", inst["id"])
        assert out.returncode == 0 and READY_MARKER in out.stdout
    assert len(addresses) == 2
    table = cli(lab, "group", "get", usable_group)
    assert table.returncode == 0 and "ADDRESS" in table.stdout
    assert all(a in table.stdout for a in addresses)


def test_console_errors(lab, client, image_demo, own_groups):
    headers = {"Authorization": f"Bearer {lab.state.reader_token}"}
    base = f"{lab.state.endpoint}/v1/instance-groups"
    resp = requests.get(f"{base}/nosuch/instances/nosuch-000000/console", headers=headers, timeout=10)
    assert resp.status_code == 404 and resp.headers["Content-Type"] == "application/problem+json"
    own_groups.append("console-errs")    # deleted and waited for, whatever happens
    client.put_group("console-errs", image="demo", flavor="small", size=0)
    resp = requests.get(f"{base}/console-errs/instances/console-errs-000000/console", headers=headers,
                        timeout=10)
    assert resp.status_code == 404 and "console-errs-000000" in resp.json()["detail"]
    resp = requests.get(f"{base}/console-errs/instances/x/console?tail_bytes=-1", headers=headers, timeout=10)
    assert resp.status_code == 422 and "tail_bytes" in resp.json()["errors"]
    out = cli(lab, "instance", "console", "console-errs-000000")
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and "does not exist" in out.stderr


@pytest.mark.parametrize("spec,field", [
    ({"user_data": "x" * 65537}, "user_data"),
    ({"ssh_authorized_keys": ["ssh-ed25519 not-a-key"]}, "ssh_authorized_keys"),
    ({"ssh_authorized_keys": "ssh-ed25519 AAAA"}, "ssh_authorized_keys"),
])
def test_bad_instance_input_names_the_field(client, image_demo, spec, field):
    with pytest.raises(ApiError) as err:
        client.put_group("bad-usable", image="demo", flavor="small", size=1, **spec)
    assert err.value.status == 422 and field in err.value.problem["errors"]
    assert client.get_group("bad-usable") is None


def test_network_configuration_guards(lab, client):
    net = client.network()
    assert net["instance_cidr"] and net["subnets"]
    # the same again: nothing changes
    same = client.request("PUT", "/v1/network", {"instance_cidr": net["instance_cidr"],
                                                 "subnet_prefix": net["subnet_prefix"]})
    assert same.status_code == 200
    with pytest.raises(ApiError) as err:            # nodes hold subnets of the current one
        client.put_network(instance_cidr="10.99.0.0/16")
    assert err.value.status == 409
    for body, field in (({"instance_cidr": "10.78.0.0/33"}, "instance_cidr"),
                        ({"instance_cidr": "192.168.0.0/16"}, "instance_cidr"),
                        ({"instance_cidr": "10.99.0.0/16", "subnet_prefix": 8}, "subnet_prefix"),
                        ({"instance_cidr": "10.99.0.0/16", "bogus": 1}, "bogus")):
        with pytest.raises(ApiError) as err:
            client.request("PUT", "/v1/network", body)
        assert err.value.status == 422 and field in err.value.problem["errors"], body
    # a live node cannot be removed; an unknown one is 404
    compute = next(n for n in client.nodes() if n["role"] == "compute")
    assert compute["subnet"] and compute["node_ip"]
    with pytest.raises(ApiError) as err:
        client.remove_node(compute["name"])
    assert err.value.status == 409
    with pytest.raises(ApiError) as err:
        client.remove_node("no-such-node")
    assert err.value.status == 404
