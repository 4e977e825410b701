"""The racks lab: every node (ZooKeeper members, the service, storage and
compute agents) in a network namespace of its own, with its own address, on
one machine — the Vagrant lab's topology without VMs.

Topology (``cowfleet lab up --racks 2 --nodes-per-rack 2 --zk 3``)::

    namespace cf-<lab>-fabric:   bridge br0  (the "switch"; nothing else)
        veth -> cf-<lab>-zk1     10.77.0.11/16   ZooKeeper member 1 (…zk2 .12, zk3 .13)
        veth -> cf-<lab>-svc     10.77.0.2/16    the control service (gunicorn :8080)
        veth -> cf-<lab>-r1-s1   10.77.1.5/16    storage agent + its own tgtd (iSCSI :3260), rack-1
        veth -> cf-<lab>-r1-c1   10.77.1.11/16   compute agent, rack-1 (…c2 .12)
        veth -> cf-<lab>-r2-s1   10.77.2.5/16    …rack-2
    host: 127.0.0.1:PORT -> 10.77.0.2:8080, a forwarder process (cowfleet.lab.netns)

The host's own network namespace gets no interface, address or route: the
forwarder listens on loopback and connects from inside the service's
namespace. Each node is configured by the same provisioning scripts as a
Vagrant VM (``scripts/provision/ROLE.sh``, with ``COWFLEET_ROOT`` = the node's
folder and ``COWFLEET_START=0``), and its daemon is the ``ROLE.run`` file they
wrote, started with ``ip netns exec``. ``down`` removes every namespace (and
so every veth and the bridge), process and file the lab made.

Instance network: each compute agent keeps its bridge (the gateway of the
subnet it claimed in 10.78.0.0/16) and its routes to its peers' subnets (via
their 10.77.x.y) inside its own namespace, and the lab turns forwarding on in
the compute namespaces only (the host's ``net.ipv4.ip_forward`` is never
touched): an instance in rack 1 reaches one in rack 2 through the two
compute nodes. With ``--fake`` the bridges and routes are real all the same
(``--node-network linux``); only the VMs are missing -- and so the storage
nodes' tgtds: nothing would attach their targets, so storage agents run
the fake exporter (``--exporter fake``) and no tgtd is started. With real
VMs libvirtd runs in the host's namespace, so a guest's tap appears there
for a moment: the agent moves it into its own namespace, onto its bridge,
before the guest runs (agents/compute/network.py). Bridges, routes and taps go with
the namespaces and domains on ``down``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from cowfleet.lab import components as c
from cowfleet.lab import netns
from cowfleet.config import SECRET_FILE_VAR, lab_dir
from cowfleet.lab.files import LabFiles, say

SERVICE_PORT = 8080
AGENT_PORT = 7070
ZK_PORT = 2181
# no VMs, but real bridges and routes in the compute namespaces
FAKE_ARGS = "--hypervisor fake --node-network linux --vcpus 8 --memory-mib 8192"
FAKE_STORAGE_ARGS = "--exporter fake"     # no VMs: no iSCSI initiator, so no tgtd either


def provision_dir() -> Path:
    """scripts/provision of the project checkout (the project is installed editable)."""
    d = Path(__file__).resolve().parents[2] / "scripts" / "provision"
    if not (d / "common.sh").exists():
        raise c.LabError(f"the provisioning scripts are not at {d}: install the project from its checkout")
    return d


@dataclass
class Node:
    short: str            # zk1, svc, r1-s1, r1-c1
    role: str             # zookeeper, service, storage, compute
    addr: str
    netns: str
    root: str             # COWFLEET_ROOT of the node
    rack: str = ""
    name: str = ""        # cluster name (agents): <lab>-<short>
    pid: int | None = None
    tgt_control_port: int = 0      # storage: its own tgtd's management channel
    tgtd_pid: int | None = None

    @property
    def run_file(self) -> Path:
        return Path(self.root) / "etc" / "cowfleet" / f"{self.role}.run"

    @property
    def log(self) -> Path:
        return self.log_of(self.role)

    def log_of(self, daemon: str) -> Path:
        return Path(self.root) / "var" / "log" / "cowfleet" / f"{daemon}.log"


@dataclass
class RacksState:
    lab_id: str
    endpoint: str
    token: str
    reader_token: str
    zk: str
    racks: int
    nodes_per_rack: int
    fake: bool
    fabric: str
    nodes: list[Node] = field(default_factory=list)
    proxy_pid: int | None = None
    started_libvirtd: bool = False
    created_at: float = field(default_factory=time.time)
    kind: str = "racks"

    @classmethod
    def from_json(cls, data: dict) -> "RacksState":
        data = dict(data)
        data["nodes"] = [Node(**n) for n in data.get("nodes", [])]
        return cls(**data)


def plan(lab_id: str, root: Path, racks: int, nodes_per_rack: int, zk: int) -> list[Node]:
    if not (1 <= racks <= 200 and 1 <= nodes_per_rack <= 200 and zk in (1, 3, 5)):
        raise c.LabError("racks and nodes per rack: 1..200; ZooKeeper members: 1, 3 or 5")

    def node(short, role, addr, rack=""):
        name = f"{lab_id}-{short}" if role in ("storage", "compute") else short
        return Node(short=short, role=role, addr=addr, netns=f"cf-{lab_id}-{short}",
                    root=str(root / "nodes" / short), rack=rack, name=name)

    nodes = [node(f"zk{i}", "zookeeper", f"10.77.0.{10 + i}") for i in range(1, zk + 1)]
    nodes.append(node("svc", "service", "10.77.0.2"))
    for r in range(1, racks + 1):
        nodes.append(node(f"r{r}-s1", "storage", f"10.77.{r}.5", f"rack-{r}"))
        for i in range(1, nodes_per_rack + 1):
            nodes.append(node(f"r{r}-c{i}", "compute", f"10.77.{r}.{10 + i}", f"rack-{r}"))
    return nodes


def stop_all(pids: list[int], group: bool = True, timeout: float = 8) -> None:
    """stop_pid for several processes at once."""
    threads = [threading.Thread(target=c.stop_pid, args=(pid, timeout, group)) for pid in pids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class RacksLab(LabFiles):
    """``up`` / ``status`` / ``down`` like :class:`cowfleet.lab.lab.Lab`, plus
    ``stop_node`` / ``start_node`` for failure tests."""

    def __init__(self, directory: str | os.PathLike | None = None, racks: int = 2,
                 nodes_per_rack: int = 2, zk: int = 3, fake: bool = False, service_workers: int = 2):
        self.dir = Path(directory) if directory else lab_dir()
        self.racks, self.nodes_per_rack, self.zk_count = racks, nodes_per_rack, zk
        self.fake, self.service_workers = fake, service_workers
        self.state: RacksState | None = self._load()

    def _load(self) -> RacksState | None:
        try:
            data = json.loads(self.state_file.read_text())
            return RacksState.from_json(data) if data.get("kind") == "racks" else None
        except (OSError, ValueError, TypeError):
            return None

    def node(self, short: str) -> Node:
        return next(n for n in self.state.nodes if n.short == short)

    def nodes(self, role: str | None = None) -> list[Node]:
        return [n for n in self.state.nodes if role is None or n.role == role]

    # -- up -------------------------------------------------------------------
    def up(self, progress: Callable[[str], None] | None = None, timeout: float = 120) -> RacksState:
        if self.state and self.running():
            say(progress, f"lab already up in {self.dir}")
            return self.state
        if self.state:
            self.down(progress)
        provision = provision_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self._make_secret()
        lab_id = "lab" + secrets.token_hex(2)
        while netns.names(f"cf-{lab_id}-"):
            lab_id = "lab" + secrets.token_hex(2)
        token, reader = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        nodes = plan(lab_id, self.dir, self.racks, self.nodes_per_rack, self.zk_count)
        port = 100
        for n in nodes:
            if n.role == "storage" and not self.fake:
                n.tgt_control_port = port = c.free_tgt_control_port(port)
                port += 1
        zk = ",".join(f"{n.addr}:{ZK_PORT}" for n in nodes if n.role == "zookeeper") + "/cowfleet"
        self.state = RacksState(lab_id=lab_id, endpoint=f"http://127.0.0.1:{c.free_port()}", token=token,
                                reader_token=reader, zk=zk, racks=self.racks,
                                nodes_per_rack=self.nodes_per_rack, fake=self.fake,
                                fabric=f"cf-{lab_id}-fabric", nodes=nodes)
        self._save()
        t0 = time.monotonic()
        try:
            self._step(progress, "network", self._make_network)
            self._step(progress, "provision", lambda: self._provision(provision, token, reader))
            if not self.fake:
                self._step(progress, "libvirtd", self._libvirtd)
            if not self.fake:
                self._step(progress, "tgtd", self._start_tgtds)
            self._step(progress, "zookeeper", lambda: self._start_zookeeper(timeout))
            self._step(progress, "service", lambda: self._start_service(timeout))
            self._step(progress, "agents", lambda: self._start_agents(timeout))
        except BaseException:
            say(progress, "start-up failed; tearing down what was started")
            self.down()
            raise
        self.env_file.write_text(f"COWFLEET_ENDPOINT={self.state.endpoint}\n"
                                 f"COWFLEET_TOKEN={self.state.token}\n"
                                 f"{SECRET_FILE_VAR}={self.secret_file}\n")
        os.chmod(self.env_file, 0o600)
        say(progress, f"  up in {time.monotonic() - t0:.1f}s")
        return self.state

    def _make_network(self) -> None:
        st = self.state
        fab = st.fabric
        netns.ip("netns", "add", fab)
        netns.ip("-n", fab, "link", "set", "lo", "up")
        netns.ip("-n", fab, "link", "add", "br0", "type", "bridge")
        netns.ip("-n", fab, "link", "set", "br0", "up")
        for i, n in enumerate(st.nodes):
            netns.ip("netns", "add", n.netns)
            netns.ip("-n", n.netns, "link", "set", "lo", "up")
            port = f"veth{i}"
            netns.ip("-n", fab, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", n.netns)
            netns.ip("-n", fab, "link", "set", port, "master", "br0", "up")
            netns.ip("-n", n.netns, "addr", "add", f"{n.addr}/16", "dev", "eth0")
            netns.ip("-n", n.netns, "link", "set", "eth0", "up")
            if n.role == "compute":
                # a compute node routes between its instance bridge and eth0; the
                # setting is the namespace's own (never the host's)
                netns.ip("netns", "exec", n.netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

    def _provision(self, scripts: Path, token: str, reader: str) -> None:
        st = self.state
        servers = ",".join(f"{n.short[2:]}={n.addr}" for n in st.nodes if n.role == "zookeeper")
        for n in st.nodes:
            env = dict(os.environ, COWFLEET_ROOT=n.root, COWFLEET_NODE=n.name, COWFLEET_RACK=n.rack,
                       COWFLEET_ADDR=n.addr, COWFLEET_ZK_SERVERS=servers, COWFLEET_ZK_PORT=str(ZK_PORT),
                       COWFLEET_INSTALL="0", COWFLEET_START="0", COWFLEET_PYTHON=sys.executable,
                       COWFLEET_SERVICE_PORT=str(SERVICE_PORT), COWFLEET_AGENT_PORT=str(AGENT_PORT),
                       COWFLEET_SERVICE_WORKERS=str(self.service_workers),
                       COWFLEET_AGENT_ARGS={"compute": FAKE_ARGS, "storage": FAKE_STORAGE_ARGS}.get(n.role, "")
                       if self.fake else "")
            if n.tgt_control_port:
                env["COWFLEET_TGT_CONTROL_PORT"] = str(n.tgt_control_port)
            if n.role != "zookeeper":     # distributed as a Vagrant node gets it: to its provisioning
                env["COWFLEET_SECRET"] = self.secret_file.read_text().strip()
            if n.role == "service":
                tokens = Path(n.root) / "etc" / "cowfleet" / "tokens"
                tokens.parent.mkdir(parents=True, exist_ok=True)
                tokens.write_text(f"{token} admin\n{reader} reader\n")
                os.chmod(tokens, 0o600)
            proc = subprocess.run(["sh", str(scripts / f"{n.role}.sh")], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise c.LabError(f"provisioning {n.short} failed:\n{proc.stdout}{proc.stderr}")
        os.chmod(self.dir / "nodes", 0o755)

    def _start_tgtds(self) -> None:
        """Each storage node its own tgtd, inside its namespace: its iSCSI
        portal is the node's address, as on a real storage host."""
        for n in self.nodes("storage"):
            n.tgtd_pid = c.ensure_tgtd(n.log_of("tgtd"), control_port=n.tgt_control_port, netns=n.netns)
            self._save()
            if n.tgtd_pid is None:      # another lab took the channel meanwhile: not ours to use
                raise c.LabError(f"tgtd management channel {n.tgt_control_port} is in use already")

    def _libvirtd(self) -> None:
        self.state.started_libvirtd = c.ensure_libvirtd()
        self._save()

    def _spawn(self, n: Node) -> None:
        proc = c.spawn(["ip", "netns", "exec", n.netns, str(n.run_file)], n.log)
        n.pid = proc.pid
        self._save()
        return proc

    def zk_mode(self, n: Node) -> str | None:
        """leader / follower / standalone; None while the member serves no clients."""
        try:
            answer = netns.ask(n.netns, n.addr, ZK_PORT, b"srvr").decode(errors="replace")
        except OSError:
            return None
        for line in answer.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def _start_zookeeper(self, timeout: float) -> None:
        members = self.nodes("zookeeper")
        for n in members:             # all at once: each waits for a quorum
            self._spawn(n)
        for n in members:
            self._wait_zk(n, timeout)

    def _wait_zk(self, n: Node, timeout: float) -> None:
        c.wait_for(lambda: self.zk_mode(n), timeout, f"ZooKeeper {n.short} on {n.addr}", log=n.log)

    def _start_service(self, timeout: float) -> None:
        st = self.state
        svc = self.nodes("service")[0]
        self._spawn(svc)
        port = int(st.endpoint.rsplit(":", 1)[1])
        proxy = c.spawn(c.python_cmd("cowfleet.lab.netns", "proxy", f"127.0.0.1:{port}", svc.netns,
                                     f"{svc.addr}:{SERVICE_PORT}"), self.dir / "proxy.log")
        st.proxy_pid = proxy.pid
        self._save()
        c.wait_for(lambda: requests.get(f"{st.endpoint}/healthz", timeout=2).ok, timeout,
                   "the service's /healthz", log=svc.log)

    def registered(self) -> set[str]:
        resp = requests.get(f"{self.state.endpoint}/v1/nodes", params={"limit": 1000}, timeout=5,
                            headers={"Authorization": f"Bearer {self.state.token}"})
        return {n["name"] for n in resp.json()} if resp.ok else set()

    def _start_agents(self, timeout: float) -> None:
        agents = self.nodes("storage") + self.nodes("compute")
        for n in agents:
            self._spawn(n)
        want = {n.name for n in agents}
        c.wait_for(lambda: want <= self.registered(), timeout, f"{len(want)} agents to register",
                   interval=0.5)

    # -- failure tests ----------------------------------------------------------
    def stop_node(self, short: str, kill: bool = True) -> None:
        """Stop a node's daemon: SIGKILL (a crash) or SIGTERM."""
        n = self.node(short)
        if n.pid and c.pid_alive(n.pid):
            if kill:
                os.killpg(n.pid, signal.SIGKILL)
                c.wait_gone(n.pid, 10)
            else:
                c.stop_pid(n.pid)
        n.pid = None
        self._save()

    def start_node(self, short: str, wait: bool = True, timeout: float = 60) -> None:
        n = self.node(short)
        if n.pid and c.pid_alive(n.pid):
            return
        self._spawn(n)
        if not wait:
            return
        if n.role == "zookeeper":
            self._wait_zk(n, timeout)
        elif n.role in ("storage", "compute"):
            c.wait_for(lambda: n.name in self.registered(), timeout, f"{n.short} to register", interval=0.5)

    def kill_tgtd(self, short: str, restart: bool = True) -> None:
        """SIGKILL a storage node's tgtd (a crash: its socket files stay)
        and, with ``restart``, start it again as ``up`` does."""
        n = self.node(short)
        if n.tgtd_pid and c.pid_alive(n.tgtd_pid):
            os.kill(n.tgtd_pid, signal.SIGKILL)
            c.wait_gone(n.tgtd_pid, 10)
        c.remove_tgtd_sockets(n.tgt_control_port)
        n.tgtd_pid = None
        self._save()
        if restart:
            n.tgtd_pid = c.ensure_tgtd(n.log_of("tgtd"), control_port=n.tgt_control_port, netns=n.netns)
            self._save()

    # -- status ---------------------------------------------------------------
    def running(self) -> bool:
        st = self.state
        return bool(st) and all(n.pid and c.pid_alive(n.pid) for n in st.nodes) \
            and all(c.pid_alive(n.tgtd_pid) for n in st.nodes if n.tgtd_pid) \
            and bool(st.proxy_pid and c.pid_alive(st.proxy_pid))

    def status(self) -> list[tuple[str, str, str]]:
        st = self.state
        if not st:
            return []
        rows = []
        for n in st.nodes:
            alive = bool(n.pid and c.pid_alive(n.pid))
            detail = f"{n.role} {n.addr} netns {n.netns}" + (f" pid {n.pid}" if alive else "")
            if n.role == "zookeeper" and alive:
                detail += f" mode={self.zk_mode(n)}"
            if n.tgtd_pid:
                detail += f"; tgtd -C {n.tgt_control_port} " + ("running" if c.pid_alive(n.tgtd_pid) else "DEAD")
            rows.append((n.short, "running" if alive else "DEAD", detail))
        rows.append(("proxy", "running" if st.proxy_pid and c.pid_alive(st.proxy_pid) else "DEAD",
                     f"{st.endpoint} -> service"))
        try:
            health = requests.get(f"{st.endpoint}/healthz", timeout=2)
            rows.append(("api", "healthy" if health.ok else f"HTTP {health.status_code}", st.endpoint))
            nodes = requests.get(f"{st.endpoint}/v1/nodes", params={"limit": 1000}, timeout=2,
                                 headers={"Authorization": f"Bearer {st.token}"}).json()
            seen = {n["name"]: n for n in nodes}
            for n in st.nodes:
                if n.role in ("storage", "compute"):
                    m = seen.get(n.name)
                    rows.append((f"node {n.name}", "registered" if m else "MISSING",
                                 f"{m['role']} rack={m['rack']} leader={m['leader']} {m['address']}" if m else ""))
        except requests.RequestException as exc:
            rows.append(("api", "DOWN", str(exc)))
        return rows

    # -- down -----------------------------------------------------------------
    def down(self, progress: Callable[[str], None] | None = None) -> None:
        st = self.state
        if st is None:
            return
        # agents first (so nothing restarts domains), then the service, then ZooKeeper;
        # the processes of one kind in parallel
        for roles in (("compute", "storage"), ("service",), ("zookeeper",)):
            stop_all([n.pid for n in st.nodes if n.pid and n.role in roles])
        say(progress, f"  stopped {sum(1 for n in st.nodes if n.pid)} node process(es)")
        tgtds = [n for n in st.nodes if n.tgtd_pid]
        for n in tgtds:
            c.stop_tgtd(n.tgtd_pid, timeout=5, control_port=n.tgt_control_port)
        if tgtds:
            say(progress, f"  stopped {len(tgtds)} tgtd(s)")
        if st.proxy_pid:
            c.stop_pid(st.proxy_pid, timeout=5)
        destroyed = c.destroy_domains(f"cf-{st.lab_id}-")
        if destroyed:
            say(progress, f"  destroyed {destroyed} domain(s)")
        left = netns.names(f"cf-{st.lab_id}-")
        for name in left:               # anything still inside our namespaces is ours
            stop_all(netns.pids(name), group=False)
            netns.ip("netns", "del", name, check=False)
        say(progress, f"  removed {len(left)} network namespace(s)")
        if st.started_libvirtd:
            c.stop_libvirtd()
            say(progress, "  stopped libvirtd")
        shutil.rmtree(self.dir, ignore_errors=True)
        say(progress, f"  removed {self.dir}")
        self.state = None
