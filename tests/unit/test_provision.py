"""The node provisioning scripts (configure only: no packages, no daemons)
and the Vagrantfile that runs them."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "provision"
SERVERS = "1=10.77.0.11,2=10.77.0.12,3=10.77.0.13"
SECRET = "a-cluster-secret-of-the-tests-0123456789"


def provision(role: str, root: Path, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, COWFLEET_ROOT=str(root), COWFLEET_INSTALL="0", COWFLEET_START="0",
                COWFLEET_ZK_SERVERS=SERVERS, COWFLEET_PYTHON="/usr/bin/python3", COWFLEET_SECRET=SECRET)
    full.update(env)
    proc = subprocess.run(["sh", str(SCRIPTS / f"{role}.sh")], env=full, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


NODES = {
    "zookeeper": dict(COWFLEET_NODE="zk2", COWFLEET_ADDR="10.77.0.12"),
    "service": dict(COWFLEET_NODE="svc", COWFLEET_ADDR="10.77.0.2"),
    "storage": dict(COWFLEET_NODE="r1-s1", COWFLEET_ADDR="10.77.1.5", COWFLEET_RACK="rack-1"),
    "compute": dict(COWFLEET_NODE="r1-c1", COWFLEET_ADDR="10.77.1.11", COWFLEET_RACK="rack-1",
                    COWFLEET_AGENT_ARGS="--hypervisor fake"),
}


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("role", sorted(NODES))
def test_running_twice_changes_nothing(tmp_path, role):
    first = provision(role, tmp_path, **NODES[role])
    assert "wrote" in first.stdout
    before = snapshot(tmp_path)
    again = provision(role, tmp_path, **NODES[role])
    assert "wrote" not in again.stdout and "made" not in again.stdout, again.stdout
    assert snapshot(tmp_path) == before
    env = (tmp_path / "etc/cowfleet/node.env").read_text()
    assert "COWFLEET_ZK=10.77.0.11:2181,10.77.0.12:2181,10.77.0.13:2181/cowfleet" in env
    assert os.access(tmp_path / f"etc/cowfleet/{role}.run", os.X_OK)


def test_a_changed_parameter_rewrites_only_what_depends_on_it(tmp_path):
    provision("compute", tmp_path, **NODES["compute"])
    before = snapshot(tmp_path)
    out = provision("compute", tmp_path, **dict(NODES["compute"], COWFLEET_RACK="rack-2")).stdout
    after = snapshot(tmp_path)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"etc/cowfleet/node.env", "etc/cowfleet/compute.env"}, out
    assert "--rack rack-2 " in (tmp_path / "etc/cowfleet/compute.env").read_text()


def test_zookeeper_config(tmp_path):
    provision("zookeeper", tmp_path, **NODES["zookeeper"])
    cfg = (tmp_path / "etc/cowfleet/zookeeper/zoo.cfg").read_text()
    assert "clientPortAddress=10.77.0.12\n" in cfg
    assert "server.1=10.77.0.11:2888:3888\nserver.2=10.77.0.12:2888:3888\nserver.3=10.77.0.13:2888:3888" in cfg
    assert (tmp_path / "var/lib/cowfleet/zookeeper/myid").read_text() == "2\n"


def test_service_makes_tokens_once(tmp_path):
    provision("service", tmp_path, **NODES["service"])
    tokens = tmp_path / "etc/cowfleet/tokens"
    first = tokens.read_text()
    assert [line.split()[1] for line in first.splitlines()] == ["admin", "reader"]
    assert tokens.stat().st_mode & 0o777 == 0o600
    provision("service", tmp_path, **NODES["service"])
    assert tokens.read_text() == first
    env = (tmp_path / "etc/cowfleet/service.env").read_text()
    assert "COWFLEET_BIND=10.77.0.2:8080\n" in env


@pytest.mark.parametrize("role", ["service", "storage", "compute"])
def test_the_cluster_secret_is_kept_for_the_owner_only(tmp_path, role):
    provision(role, tmp_path, **NODES[role])
    secret = tmp_path / "etc/cowfleet/secret"
    assert secret.read_text() == SECRET + "\n"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert f"COWFLEET_SECRET_FILE={secret}\n" in (tmp_path / f"etc/cowfleet/{role}.env").read_text()
    # a second run without it keeps it; a node never provisioned with one is refused
    again = provision(role, tmp_path, **dict(NODES[role], COWFLEET_SECRET=""))
    assert "wrote" not in again.stdout and secret.read_text() == SECRET + "\n"
    full = dict(os.environ, COWFLEET_ROOT=str(tmp_path / "other"), COWFLEET_INSTALL="0", COWFLEET_START="0",
                COWFLEET_ZK_SERVERS=SERVERS, COWFLEET_SECRET="", **NODES[role])
    proc = subprocess.run(["sh", str(SCRIPTS / f"{role}.sh")], env=full, capture_output=True, text=True)
    assert proc.returncode != 0 and "no cluster secret" in proc.stderr
    assert not (tmp_path / "other/etc/cowfleet/secret").exists()


def test_zookeeper_members_get_no_secret(tmp_path):
    provision("zookeeper", tmp_path, **NODES["zookeeper"])
    assert not (tmp_path / "etc/cowfleet/secret").exists()


def test_bad_parameters_are_refused(tmp_path):
    full = dict(os.environ, COWFLEET_ROOT=str(tmp_path), COWFLEET_INSTALL="0", COWFLEET_START="0",
                COWFLEET_ZK_SERVERS=SERVERS, COWFLEET_NODE="zk9", COWFLEET_ADDR="10.77.0.99")
    proc = subprocess.run(["sh", str(SCRIPTS / "zookeeper.sh")], env=full, capture_output=True, text=True)
    assert proc.returncode != 0 and "not in COWFLEET_ZK_SERVERS" in proc.stderr
    proc = subprocess.run(["sh", str(SCRIPTS / "compute.sh"), "BOGUS=1"], env=full, capture_output=True, text=True)
    assert proc.returncode == 2


def test_the_lab_run_sets_nothing_on_the_host(tmp_path):
    """Configure-only under a prefix (the racks lab): no sysctl file, not even
    under the prefix, and no kernel setting applied (the lab sets forwarding
    inside each compute namespace itself)."""
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    out = provision("compute", tmp_path, **NODES["compute"]).stdout
    assert not (tmp_path / "etc/sysctl.d").exists()
    assert "ip_forward" not in out
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forward
    assert "host_sysctl net.ipv4.ip_forward 1 " in (SCRIPTS / "compute.sh").read_text()


def on_a_pretend_host(commands: str, **env) -> subprocess.CompletedProcess:
    """sh sourcing common.sh, then COMMANDS, in a network namespace and a
    mount namespace of their own with a tmpfs over /etc/sysctl.d: a real
    host's path of the scripts, touching nothing of this machine."""
    # root, as the whole suite runs (make test): a failure, never a skip
    assert os.geteuid() == 0, "needs root (unshare --net --mount): run the suite as root"
    assert shutil.which("unshare"), "util-linux's unshare is missing"
    full = {k: v for k, v in os.environ.items() if not k.startswith("COWFLEET_")}
    full.update(COWFLEET_INSTALL="0", COWFLEET_START="1", COWFLEET_NODE="r1-c1", COWFLEET_ADDR="10.77.1.11",
                COWFLEET_ZK_SERVERS=SERVERS)
    full.update(env)
    script = f"mount -t tmpfs cf-test /etc/sysctl.d && . ./common.sh && {commands}"
    proc = subprocess.run(["unshare", "--net", "--mount", "sh", "-c", script], cwd=SCRIPTS, env=full,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_a_real_compute_host_forwards_and_keeps_it(tmp_path):
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    conf = "/etc/sysctl.d/60-cowfleet-forwarding.conf"
    step = "host_sysctl net.ipv4.ip_forward 1 60-cowfleet-forwarding.conf"
    out = on_a_pretend_host(f"sysctl -n net.ipv4.ip_forward; {step}; {step}; "
                            f"cat {conf}; echo CHANGED=$CHANGED").stdout
    before, rest = out.split("\n", 1)
    assert before == "0", "a new namespace starts without forwarding"
    assert rest.count(f"wrote {conf}") == 1, "written once, then left alone"
    assert rest.count("net.ipv4.ip_forward = 1") == 3, rest     # applied twice, and in the file
    assert "CHANGED=0" in rest, "a kernel setting restarts no daemon"
    # the racks lab's way (a prefix, nothing installed or started): nothing
    out = on_a_pretend_host(f"{step}; ls /etc/sysctl.d; sysctl -n net.ipv4.ip_forward",
                            COWFLEET_ROOT=str(tmp_path), COWFLEET_START="0").stdout
    assert out.split() == ["0"]
    # a prefix alone is enough to keep off the host (test_provision_start starts under one)
    out = on_a_pretend_host(f"{step}; ls /etc/sysctl.d; sysctl -n net.ipv4.ip_forward",
                            COWFLEET_ROOT=str(tmp_path)).stdout
    assert out.split() == ["0"]
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forward, "this machine's setting is untouched"


def vagrant(tmp_path, *args, **env):
    assert shutil.which("vagrant"), "vagrant is not installed (scripts/install-system-deps.sh installs it)"
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")
    full = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1",
                VAGRANT_DEFAULT_PROVIDER="libvirt", **env)
    return subprocess.run(["vagrant", *args], cwd=tmp_path, env=full, capture_output=True, text=True,
                          timeout=120)


def test_vagrantfile_validates(tmp_path):
    proc = vagrant(tmp_path, "validate")
    assert proc.returncode == 0 and "validated successfully" in proc.stdout, proc.stdout + proc.stderr
    proc = vagrant(tmp_path, "validate", COWFLEET_ZK_COUNT="2")
    assert proc.returncode != 0 and "must be 1, 3 or 5" in proc.stdout + proc.stderr


def test_racks_lab_plan_matches_the_vagrantfile():
    """Same node names and addresses in both labs (and so in testinfra's view)."""
    from cowfleet.lab.racks import plan
    nodes = plan("lab0000", Path("/x"), racks=2, nodes_per_rack=2, zk=3)
    got = {n.short: (n.role, n.addr, n.rack) for n in nodes}
    assert got == {
        "zk1": ("zookeeper", "10.77.0.11", ""), "zk2": ("zookeeper", "10.77.0.12", ""),
        "zk3": ("zookeeper", "10.77.0.13", ""), "svc": ("service", "10.77.0.2", ""),
        "r1-s1": ("storage", "10.77.1.5", "rack-1"), "r1-c1": ("compute", "10.77.1.11", "rack-1"),
        "r1-c2": ("compute", "10.77.1.12", "rack-1"), "r2-s1": ("storage", "10.77.2.5", "rack-2"),
        "r2-c1": ("compute", "10.77.2.11", "rack-2"), "r2-c2": ("compute", "10.77.2.12", "rack-2")}
    assert {n.netns for n in nodes} == {f"cf-lab0000-{s}" for s in got}
    assert next(n for n in nodes if n.short == "r2-c1").name == "lab0000-r2-c1"
    vagrantfile = (REPO / "Vagrantfile").read_text()
    for pattern in ('"10.77.0.#{10 + i}"', '"10.77.0.2"', '"10.77.#{r}.5"', '"10.77.#{r}.#{10 + i}"',
                    '"r#{r}-s1"', '"r#{r}-c#{i}"', '"zk#{i}"', '"svc"'):
        assert pattern in vagrantfile, pattern
