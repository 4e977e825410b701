"""The embedded one-node lab: ZooKeeper, libvirtd, tgtd, the service under
gunicorn, one storage agent and one compute agent, all on loopback.

``up`` returns only when every component is healthy; ``down`` stops what
``up`` started and removes what it made (domains, overlays, sockets, znodes,
files). The lab's state lives in one folder, ``lab.json`` names every
process, and ``env`` holds the endpoint and token the CLI reads.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from cowfleet.agents.compute.network import LinuxBridgeNetwork, bridge_name, remove_orphan_bridges
from cowfleet.agents.compute.sessions import kill_all_under
from cowfleet.agents.storage import tgt
from cowfleet.config import SECRET_FILE_VAR, lab_dir
from cowfleet.lab import components as c
from cowfleet.lab.files import LabFiles, say
from cowfleet.lab.racks import RacksLab

@dataclass
class LabState:
    lab_id: str
    endpoint: str
    token: str
    reader_token: str
    zk: str
    pids: dict[str, int] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    started_libvirtd: bool = False
    started_tgtd: int | None = None
    nodes: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)


def open_lab(directory: str | os.PathLike | None = None):
    """The lab in ``directory``, whichever kind ``lab.json`` says it is
    (a one-node :class:`Lab` when there is none)."""
    d = Path(directory) if directory else lab_dir()
    try:
        kind = json.loads((d / "lab.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind == "racks":
        return RacksLab(d)
    return Lab(d)


class Lab(LabFiles):
    def __init__(self, directory: str | os.PathLike | None = None, service_workers: int = 4,
                 rack: str = "rack-1"):
        self.dir = Path(directory) if directory else lab_dir()
        self.service_workers = service_workers
        self.rack = rack
        self.state: LabState | None = self._load()

    # -- state file -----------------------------------------------------------
    def _load(self) -> LabState | None:
        try:
            return LabState(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    # -- up -------------------------------------------------------------------
    def up(self, progress: Callable[[str], None] | None = None, timeout: float = 120) -> LabState:
        if self.state and self.running():
            say(progress, f"lab already up in {self.dir}")
            return self.state
        if self.state:
            self.down(progress)
        remove_orphans(progress)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)     # qemu runs unprivileged: it must reach overlays
        self._make_secret()
        lab_id = "lab" + secrets.token_hex(2)
        token, reader = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        tokens = self.dir / "tokens"
        tokens.write_text(f"{token} admin\n{reader} reader\n")
        os.chmod(tokens, 0o600)
        port = c.free_port()
        self.state = LabState(lab_id=lab_id, endpoint=f"http://127.0.0.1:{port}", token=token,
                              reader_token=reader, zk="")
        self._save()
        try:
            self._start_all(progress, port, tokens, timeout)
        except Exception:
            say(progress, "start-up failed; tearing down what was started")
            self.down()
            raise
        self.env_file.write_text(f"COWFLEET_ENDPOINT={self.state.endpoint}\n"
                                 f"COWFLEET_TOKEN={self.state.token}\n"
                                 f"COWFLEET_ZK={self.state.zk}\n"
                                 f"{SECRET_FILE_VAR}={self.secret_file}\n")
        os.chmod(self.env_file, 0o600)
        return self.state

    def _start_all(self, progress, port: int, tokens: Path, timeout: float) -> None:
        st = self.state
        zk = c.ZooKeeperServer(self.dir / "zookeeper")

        def start_zk():
            zk.start()
            st.pids["zookeeper"] = zk.pid
            st.zk = zk.hosts + "/cowfleet-" + st.lab_id
            self._save()

        def start_libvirtd():
            st.started_libvirtd = c.ensure_libvirtd()
            self._save()

        def start_tgtd():
            st.started_tgtd = c.ensure_tgtd(self.dir / "tgtd.log")
            self._save()

        def start_service():
            proc = c.start_service(self.dir, port, st.zk, tokens, self.service_workers, timeout,
                                   env=self.secret_env())
            st.pids["service"] = proc.pid
            self._save()

        def start_agent(role: str):
            name = f"{st.lab_id}-{role}-1"
            st.commands[f"agent-{role}"] = c.python_cmd(
                "cowfleet.agents.main", "--role", role, "--rack", self.rack, "--zk", st.zk,
                "--name", name, "--state-dir", str(self.dir / "nodes" / name))
            st.nodes.append(name)
            self.restart(f"agent-{role}", timeout)

        self._step(progress, "zookeeper", start_zk)
        self._step(progress, "libvirtd", start_libvirtd)
        self._step(progress, "tgtd", start_tgtd)
        self._step(progress, "service", start_service)
        self._step(progress, "storage agent", lambda: start_agent("storage"))
        self._step(progress, "compute agent", lambda: start_agent("compute"))

    def restart(self, component: str, timeout: float = 60) -> int:
        """(Re)start an agent of the lab; kills it first if it runs. Returns its pid."""
        st = self.state
        if component not in st.commands:
            raise c.LabError(f"unknown lab component '{component}'")
        if st.pids.get(component) and c.pid_alive(st.pids[component]):
            c.stop_pid(st.pids[component])
        log = self.dir / f"{component}.log"
        proc = c.spawn(st.commands[component], log, env=self.secret_env())
        st.pids[component] = proc.pid
        self._save()
        name = st.commands[component][st.commands[component].index("--name") + 1]
        c.wait_for(lambda: self._node_registered(name), timeout, f"{component} to register",
                   proc=proc, log=log)
        return proc.pid

    def _node_registered(self, name: str) -> bool:
        resp = requests.get(f"{self.state.endpoint}/v1/nodes", timeout=2,
                            headers={"Authorization": f"Bearer {self.state.token}"})
        return resp.ok and any(n["name"] == name for n in resp.json())

    # -- status ---------------------------------------------------------------
    def running(self) -> bool:
        return bool(self.state) and all(c.pid_alive(p) for p in self.state.pids.values())

    def status(self) -> list[tuple[str, str, str]]:
        """(component, health, detail) rows."""
        if not self.state:
            return []
        st = self.state
        rows = []
        for name, pid in st.pids.items():
            rows.append((name, "running" if c.pid_alive(pid) else "DEAD", f"pid {pid}"))
        rows.append(("libvirtd", "running" if c.libvirtd_running() else "DEAD",
                     "started by lab" if st.started_libvirtd else "shared"))
        rows.append(("tgtd", "running" if c.tgtd_running() else "DEAD",
                     "started by lab" if st.started_tgtd else "shared"))
        try:
            health = requests.get(f"{st.endpoint}/healthz", timeout=2)
            rows.append(("api", "healthy" if health.ok else f"HTTP {health.status_code}", st.endpoint))
            nodes = requests.get(f"{st.endpoint}/v1/nodes", timeout=2,
                                 headers={"Authorization": f"Bearer {st.token}"}).json()
            seen = {n["name"]: n for n in nodes}
            for name in st.nodes:
                n = seen.get(name)
                rows.append((f"node {name}", "registered" if n else "MISSING",
                             f"{n['role']} rack={n['rack']} leader={n['leader']}"
                             + (f" virt={n['virt_type']}" if n and n.get("virt_type") else "")
                             if n else ""))
        except requests.RequestException as exc:
            rows.append(("api", "DOWN", str(exc)))
        return rows

    # -- down -----------------------------------------------------------------
    def down(self, progress: Callable[[str], None] | None = None) -> None:
        st = self.state
        if st is None:
            if self.dir.exists() and (self.dir / "tokens").exists():
                shutil.rmtree(self.dir, ignore_errors=True)
            return
        # agents first (so nothing restarts domains), then their domains
        for name in ("agent-compute", "agent-storage", "service"):
            pid = st.pids.get(name)
            if pid:
                c.stop_pid(pid)
                say(progress, f"  stopped {name}")
        destroyed = c.destroy_domains(f"cf-{st.lab_id}-")
        if destroyed:
            say(progress, f"  destroyed {destroyed} domain(s)")
        sessions = kill_all_under(self.dir)
        if sessions:
            say(progress, f"  stopped {sessions} image session(s)")
        targets = sum(tgt.remove_node_targets(n) for n in st.nodes) if c.tgtd_running() else 0
        if targets:
            say(progress, f"  removed {targets} iSCSI target(s)")
        bridges = 0
        for n in st.nodes:      # the compute agents' instance bridges (a storage node has none)
            bridges += LinuxBridgeNetwork(bridge_name(n)).remove_bridge()
        if bridges:
            say(progress, f"  removed {bridges} instance bridge(s)")
        if st.pids.get("zookeeper"):
            c.stop_pid(st.pids["zookeeper"])
            say(progress, "  stopped zookeeper")
        if st.started_tgtd:
            say(progress, "  " + c.release_tgtd(st.started_tgtd))
        if st.started_libvirtd:
            c.stop_libvirtd()
            say(progress, "  stopped libvirtd")
        shutil.rmtree(self.dir, ignore_errors=True)
        say(progress, f"  removed {self.dir}")
        self.state = None


def remove_orphans(progress=None) -> None:
    """The instance bridges of one-node labs whose folder is gone: a lab
    killed without ``lab down`` and then deleted has nothing else that names
    them. (A racks lab's bridges are in its namespaces, gone with them.)"""
    gone = remove_orphan_bridges()
    if gone:
        say(progress, f"  removed {len(gone)} bridge(s) of labs whose folder is gone: {', '.join(gone)}")
