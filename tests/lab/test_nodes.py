"""testinfra: each lab node checked as an operator would check a host —
its configuration files, its daemon running, its ports listening on the
node's own address, its ZooKeeper membership, and nothing stray on it.
Runs against the racks lab (network namespaces) or the Vagrant lab (ssh):
see conftest.py."""
from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.lab

PORTS = {"zookeeper": [2181, 3888], "service": [8080], "storage": [7070], "compute": [7070]}


def py(lab_node, code: str, python: str = "python3") -> str:
    """Run Python on the node (its own interpreter, or the project's from its env file)."""
    out = lab_node.host.check_output("%s -c %s", python, code)
    return out.strip()


def test_configuration_files(lab_node):
    env = lab_node.env()
    assert env["COWFLEET_ADDR"]
    hosts, _, chroot = env["COWFLEET_ZK"].partition("/")
    assert len(hosts.split(",")) == 3, "every client gets the whole ensemble"
    assert chroot
    run = lab_node.host.file(lab_node.etc(f"{lab_node.role}.run"))
    assert run.is_file and run.mode & 0o111
    assert lab_node.host.file(lab_node.etc(f"{lab_node.role}.env")).is_file
    if lab_node.role == "zookeeper":
        cfg = lab_node.host.file(lab_node.etc("zookeeper/zoo.cfg")).content_string
        assert f"clientPortAddress={env['COWFLEET_ADDR']}" in cfg
        assert cfg.count("server.") == 3
        data = next(line.split("=", 1)[1] for line in cfg.splitlines() if line.startswith("dataDir="))
        myid = lab_node.host.file(f"{data}/myid").content_string.strip()
        assert f"server.{myid}={env['COWFLEET_ADDR']}:" in cfg
    if lab_node.role == "service":
        tokens = lab_node.host.file(lab_node.env("service.env")["COWFLEET_TOKENS_FILE"])
        assert tokens.mode == 0o600


def test_address_is_the_nodes_own(lab_node):
    addr = lab_node.env()["COWFLEET_ADDR"]
    assert f" {addr}/" in lab_node.host.check_output("ip -o -4 addr show")


def test_daemon_running_and_listening_on_its_address(lab_node):
    env = lab_node.env()
    marker = {"zookeeper": f"QuorumPeerMain {lab_node.etc('zookeeper/zoo.cfg')}",
              "service": f"--bind {env['COWFLEET_ADDR']}:8080",
              "storage": f"--name {env['COWFLEET_NODE']} ",
              "compute": f"--name {env['COWFLEET_NODE']} "}[lab_node.role]
    procs = lab_node.host.check_output("ps -ww -eo args")
    assert marker in procs, f"no process with '{marker}'"
    for port in PORTS[lab_node.role]:
        assert lab_node.host.socket(f"tcp://{env['COWFLEET_ADDR']}:{port}").is_listening, port


def test_zookeeper_membership(lab_node, api):
    env = lab_node.env()
    if lab_node.role == "zookeeper":
        mode = py(lab_node, "import socket; s = socket.create_connection(('%s', 2181), 2); "
                            "s.sendall(b'srvr'); print(s.makefile().read())" % env["COWFLEET_ADDR"])
        assert "Mode: leader" in mode or "Mode: follower" in mode, mode
    elif lab_node.role in ("storage", "compute"):
        role_env = lab_node.env(f"{lab_node.role}.env")
        python = role_env["COWFLEET_PYTHON"]
        # the node's own secret: its znodes are closed to any other session
        code = ("from cowfleet.zk.connection import connect; import sys; "
                f"zk = connect('{env['COWFLEET_ZK']}', secret=open('{role_env['COWFLEET_SECRET_FILE']}', 'rb').read().strip()); "
                f"data, stat = zk.get('/cowfleet/nodes/{env['COWFLEET_NODE']}'); "
                "print(data.decode()); print(stat.ephemeralOwner, file=sys.stderr); zk.stop()")
        record = json.loads(py(lab_node, code, python))
        assert record["address"] == f"http://{env['COWFLEET_ADDR']}:7070"
        assert record["rack"] == env["COWFLEET_RACK"] and record["role"] == lab_node.role
    else:   # the service is a ZooKeeper client: /healthz says whether its session is usable
        code = ("import urllib.request; "
                f"print(urllib.request.urlopen('http://{env['COWFLEET_ADDR']}:8080/healthz', timeout=5).status)")
        assert py(lab_node, code) == "200"


@pytest.mark.roles("storage", "compute")
def test_p2p_reaches_every_other_agent(lab_node, api):
    """Agents' advertised addresses are reachable from other nodes: P2P crosses hosts."""
    me = lab_node.env()["COWFLEET_NODE"]
    others = [n["address"] for n in api.nodes() if n["name"] != me]
    assert others
    code = ("import urllib.request, json; "
            f"print(json.dumps([json.load(urllib.request.urlopen(a + '/healthz', timeout=5))['node'] "
            f"for a in {others!r}]))")
    assert len(json.loads(py(lab_node, code))) == len(others)


@pytest.mark.roles("service", "storage", "compute")
def test_the_cluster_is_closed_to_a_node_without_the_secret(lab_node, api):
    """The node keeps the cluster secret to root (0600); from it, a ZooKeeper
    session without the secret reads no znode of the cluster, and an unsigned
    P2P call to an agent is refused (401) where the same call signed works."""
    env = lab_node.env()
    role_env = lab_node.env(f"{lab_node.role}.env")
    secret = lab_node.host.file(role_env["COWFLEET_SECRET_FILE"])
    assert secret.exists and secret.mode == 0o600 and secret.user == "root"
    agent = next(n["address"] for n in api.nodes() if n["role"] == "compute")
    code = ("import json, requests; from kazoo.client import KazooClient; from kazoo.exceptions import NoAuthError\n"
            f"zk = KazooClient(hosts='{env['COWFLEET_ZK']}'); zk.start(10)\n"
            "try:\n    zk.get_children('/cowfleet/nodes'); zk_answer = 'read'\n"
            "except NoAuthError:\n    zk_answer = 'refused'\n"
            "zk.stop()\n"
            f"body = {{'flavor': {{'name': 'small', 'vcpus': 1, 'memory_mib': 128, 'disk_gib': 1}}, 'want': 0, 'request': 'testinfra'}}\n"
            f"unsigned = requests.post('{agent}/v1/offer', json=body, timeout=5).status_code\n"
            f"import os; os.environ['COWFLEET_SECRET_FILE'] = '{secret.path}'\n"
            "from cowfleet import p2p\n"
            f"signed = p2p.session().post('{agent}/v1/offer', json=body, timeout=5).status_code\n"
            f"p2p.post('{agent}', '/v1/release', {{'request': 'testinfra'}})\n"
            "print(json.dumps([zk_answer, unsigned, signed]))")
    assert json.loads(py(lab_node, code, role_env["COWFLEET_PYTHON"])) == ["refused", 401, 200]


@pytest.mark.roles("storage", "compute")
def test_agent_exports_its_metrics(lab_node, api):
    """Scraped from the node itself, at its own address: the agent's Prometheus
    metrics name it, say it is connected, and give its capacity and
    leadership (exactly one leader per rack and role, README "Watching the agents")."""
    env = lab_node.env()
    code = ("import urllib.request; "
            f"print(urllib.request.urlopen('http://{env['COWFLEET_ADDR']}:7070/metrics', timeout=5).read().decode())")
    text = py(lab_node, code)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    me = (("node", env["COWFLEET_NODE"]), ("rack", env["COWFLEET_RACK"]), ("role", lab_node.role))
    assert samples[("cowfleet_agent_info", me)] == 1
    assert samples[("cowfleet_agent_zookeeper_connected", ())] == 1
    resource = "vcpus" if lab_node.role == "compute" else "disk_mib"
    assert samples[("cowfleet_agent_capacity", (("resource", resource),))] > 0
    assert samples[("cowfleet_agent_leader", ())] == int(any(
        n["leader"] for n in api.nodes() if n["name"] == env["COWFLEET_NODE"]))


@pytest.mark.roles("storage")
def test_storage_tgtd_serves_the_nodes_own_portal(lab_node, api):
    """The node's tgtd answers (in the racks lab: a tgtd of its own, on the
    management channel its storage.env names), listens for iSCSI on the
    node's address, and every target of this node belongs to a known image.
    A node of the racks lab's ``--fake`` runs the fake exporter instead: no
    tgtd, nothing listening for iSCSI, and the node healthy all the same."""
    node = lab_node.env()["COWFLEET_NODE"]
    if "--exporter fake" in lab_node.env("storage.env")["AGENT_ARGS"]:
        assert lab_node.host.run("ss -Hltn 'sport = :3260'").stdout.strip() == ""
        assert next(n for n in api.nodes() if n["name"] == node)["healthy"] is True
        return
    control = lab_node.env("storage.env").get("COWFLEET_TGT_CONTROL_PORT")
    show = lab_node.host.run(f"tgtadm {'-C ' + control if control else ''} --lld iscsi --op show --mode target")
    assert show.rc == 0, show.stderr
    sockets = lab_node.host.run("ss -Hltn 'sport = :3260'").stdout
    assert "0.0.0.0:3260" in sockets or f"{lab_node.env()['COWFLEET_ADDR']}:3260" in sockets, sockets
    images = {i["name"] for i in api.list_images()}
    for line in show.stdout.splitlines():
        if line.startswith("Target "):
            assert f":{node}:" in line, f"another node's target in this node's tgtd: {line}"
            assert any(f":{node}:{img}-" in line for img in images), line


@pytest.mark.roles("compute")
def test_compute_has_no_stray_domains_or_overlays(lab_node, api):
    env = lab_node.env()
    node = env["COWFLEET_NODE"]
    mine = {i["id"] for g in api.list_groups() for i in (api.get_group(g["name"]) or {}).get("instances", [])
            if i["node"] == node}
    virsh = lab_node.host.run("virsh -c qemu:///system list --all --name")
    if virsh.rc == 0:
        domains = {d.split("--", 1)[1] for d in virsh.stdout.split() if d.startswith(f"cf-{node}--")}
        assert domains <= mine, f"stray domains: {domains - mine}"
    state_dir = f"{lab_node.root}/var/lib/cowfleet/{node}/overlays"
    found = lab_node.host.run("find %s -name '*.qcow2'", state_dir).stdout.split()
    overlays = {f.rsplit("/", 1)[1].removesuffix(".qcow2") for f in found}
    assert overlays <= mine, f"stray overlays: {overlays - mine}"
