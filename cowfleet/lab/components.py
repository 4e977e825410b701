"""The real components of a cowfleet node, started without systemd.

Used by ``cowfleet lab`` and by the test fixtures alike, so what the tests
prove is what the lab runs.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from cowfleet.agents.storage.tgt import control_args, parse_targets
from cowfleet.procs import cmdline, pid_alive, stop_pid, wait_gone

LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"
NET_AUTOSTART = "/etc/libvirt/qemu/networks/autostart"


class LabError(RuntimeError):
    pass


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1,
             proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``condition`` until it is truthy; fail with what we waited for."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise LabError(f"{what}: process exited with {proc.returncode}{_tail(log)}")
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}{_tail(log)}")
        time.sleep(interval)


def _tail(log: Path | None, lines: int = 15) -> str:
    if not log or not Path(log).exists():
        return ""
    text = Path(log).read_text(errors="replace").splitlines()[-lines:]
    return "\n--- " + str(log) + " ---\n" + "\n".join(text)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def spawn(cmd: list[str], log: Path, env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    """Start a process in its own session (it outlives the caller), logging to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=cwd)
    finally:
        out.close()


# -- ZooKeeper -----------------------------------------------------------------

ZK_CLASSPATH = "/usr/share/java/zookeeper.jar:/usr/share/java/*"


@dataclass
class ZooKeeperServer:
    """One ZooKeeper server (Debian's package): standalone, or member ``myid``
    of an ensemble whose ``peers`` lines (``server.N=host:quorum:election``)
    every member shares."""
    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    pid: int | None = None
    myid: int | None = None
    peers: list[str] = field(default_factory=list)

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 60, wait: bool = True) -> None:
        if not Path("/usr/share/java/zookeeper.jar").exists():
            raise LabError("ZooKeeper is not installed: apt-get install zookeeper (or run make setup)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.data_dir / "zoo.cfg"
        ensemble = ""
        if self.peers:
            (self.data_dir / "data").mkdir(exist_ok=True)
            (self.data_dir / "data" / "myid").write_text(f"{self.myid}\n")
            ensemble = "".join(f"{line}\n" for line in self.peers)
        cfg.write_text(
            f"tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={self.data_dir / 'data'}\n"
            f"clientPort={self.port}\nclientPortAddress={self.host}\nmaxClientCnxns=0\n"
            "admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,mntr\n"
            "minSessionTimeout=1000\nmaxSessionTimeout=20000\n" + ensemble)
        log4j = self.data_dir / "log4j.properties"
        log4j.write_text("log4j.rootLogger=WARN, CONSOLE\n"
                         "log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n"
                         "log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n"
                         "log4j.appender.CONSOLE.layout.ConversionPattern=%d %p %c{1}: %m%n\n")
        java = shutil.which("java") or "/usr/bin/java"
        log = self.data_dir / "zookeeper.log"
        # gc.log beside zookeeper.log: a placement of 10,000 instances spent
        # 10-18 % of its time in young-generation pauses (bench/README.md)
        proc = spawn([java, "-Xmx256m", "-XX:+UseSerialGC", f"-Xlog:gc:file={self.data_dir / 'gc.log'}:uptime",
                      f"-Dlog4j.configuration=file:{log4j}",
                      "-Dzookeeper.jmx.log4j.disable=true",
                      "-cp", ZK_CLASSPATH, "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)],
                     log)
        self.pid = proc.pid
        self._proc, self._log = proc, log
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 60) -> None:
        wait_for(self.serving, timeout, f"ZooKeeper on {self.hosts}", proc=self._proc, log=self._log)

    def _ask(self, word: bytes) -> str:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(word)
                return s.recv(4096).decode(errors="replace")
        except OSError:
            return ""

    def healthy(self) -> bool:
        return self._ask(b"ruok") == "imok"

    def mode(self) -> str | None:
        """standalone, leader or follower; None while not serving clients
        (an ensemble member without a quorum answers 'not currently serving')."""
        for line in self._ask(b"srvr").splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def serving(self) -> bool:
        return self.mode() is not None

    def stop(self) -> None:
        if self.pid:
            stop_pid(self.pid)
            self.pid = None


class ZooKeeperEnsemble:
    """``size`` members on loopback, each its own process and folder."""

    def __init__(self, base: Path, size: int = 3, host: str = "127.0.0.1"):
        self.members = [ZooKeeperServer(base / f"zk{i}", host=host, myid=i) for i in range(1, size + 1)]
        peers = [f"server.{m.myid}={host}:{free_port(host)}:{free_port(host)}" for m in self.members]
        for m in self.members:
            m.peers = peers

    @property
    def hosts(self) -> str:
        """The connection string naming every member."""
        return ",".join(m.hosts for m in self.members)

    def start(self, timeout: float = 90) -> None:
        for m in self.members:          # all at once: each waits for a quorum
            m.start(wait=False)
        for m in self.members:
            m.wait(timeout)

    def stop(self) -> None:
        for m in self.members:
            m.stop()


# -- the control service -----------------------------------------------------------

def start_service(directory: Path, port: int, zk_hosts: str, tokens_file: Path, workers: int = 4,
                  timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.Popen:
    """gunicorn serving the API on 127.0.0.1:port; returns once /healthz answers.
    ``env``: its environment (default: this process's)."""
    metrics_dir = directory / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    env = dict(env if env is not None else os.environ, COWFLEET_ZK=zk_hosts, COWFLEET_TOKENS_FILE=str(tokens_file),
               PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    log = directory / "service.log"
    proc = spawn(python_cmd("gunicorn", "--config", "python:cowfleet.service.gunicorn_conf",
                            "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
                            "--access-logfile", str(directory / "access.log"),
                            "cowfleet.service:create_app()"), log, env=env)
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok, timeout,
                 "the service's /healthz", proc=proc, log=log)
    except BaseException:
        stop_pid(proc.pid)        # nobody else knows its pid yet
        raise
    return proc


# -- libvirtd and tgtd (machine daemons, shared) ---------------------------------

def destroy_domains(prefix: str) -> int:
    """Destroy every libvirt domain whose name starts with ``prefix``."""
    if not libvirtd_running():
        return 0
    # imported here, as in agents/compute/hypervisor.py: the test fixtures and
    # the fake-hypervisor racks lab use this module without loading libvirt
    import libvirt
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    conn = libvirt.open("qemu:///system")
    n = 0
    try:
        for dom in conn.listAllDomains():
            if dom.name().startswith(prefix):
                try:
                    dom.destroy()
                except libvirt.libvirtError:
                    pass
                try:
                    dom.undefine()
                except libvirt.libvirtError:
                    pass
                n += 1
    finally:
        conn.close()
    return n


def libvirtd_running() -> bool:
    if not os.path.exists(LIBVIRT_SOCK):
        return False
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(LIBVIRT_SOCK)
        return True
    except OSError:
        return False


def ensure_libvirtd(timeout: float = 30) -> bool:
    """Start virtlogd and libvirtd unless running; True if this call started them.

    libvirt's default NAT network must never start here: its autostart link
    is removed before the daemon starts.
    """
    if libvirtd_running():
        return False
    if not shutil.which("libvirtd"):
        raise LabError("libvirtd is not installed: apt-get install libvirt-daemon-system")
    Path(NET_AUTOSTART, "default.xml").unlink(missing_ok=True)
    subprocess.run(["virtlogd", "-d"], check=False)
    subprocess.run(["libvirtd", "-d"], check=True)
    wait_for(libvirtd_running, timeout, "libvirtd's socket")
    return True


def _pids_of(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def stop_libvirtd() -> None:
    for name in ("libvirtd", "virtlogd"):
        for pid in _pids_of(name):
            stop_pid(pid, group=False)


TGTD_RUN = Path("/run/tgtd")


def _tgtadm(control_port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tgtadm", *control_args(control_port), "--lld", "iscsi", *args], capture_output=True)


def tgtd_running(control_port: int = 0) -> bool:
    return _tgtadm(control_port, "--op", "show", "--mode", "sys").returncode == 0


def free_tgt_control_port(start: int = 100) -> int:
    """A tgtd management channel no tgtd on this machine uses (its socket
    file is /run/tgtd/socket.N)."""
    port = start
    while (TGTD_RUN / f"socket.{port}").exists() or tgtd_running(port):
        port += 1
    return port


def ensure_tgtd(log: Path, timeout: float = 20, control_port: int = 0,
                netns: str | None = None, portal: str | None = None) -> int | None:
    """Start tgtd (management channel ``control_port``, inside network
    namespace ``netns`` if given, listening on ``portal`` HOST:PORT if given,
    else on every address at 3260) unless it runs; returns its pid if this
    call started it."""
    if not shutil.which("tgtd"):
        raise LabError("tgtd is not installed: apt-get install tgt")
    if tgtd_running(control_port):
        return None
    cmd = ["tgtd", "-f", *control_args(control_port), *(["--iscsi", f"portal={portal}"] if portal else [])]
    proc = spawn((["ip", "netns", "exec", netns] if netns else []) + cmd, log)
    try:
        wait_for(lambda: tgtd_running(control_port), timeout, "tgtd", proc=proc, log=log)
    except LabError:
        stop_tgtd(proc.pid, timeout=2, control_port=control_port)
        raise
    return proc.pid


def stop_tgtd(pid: int, timeout: float = 10.0, control_port: int = 0) -> None:
    """tgtd ignores SIGTERM; its own shutdown request stops it at once.
    Signals remain the fallback (SIGKILL if it lingers)."""
    _tgtadm(control_port, "--op", "delete", "--mode", "system")
    if not wait_gone(pid, timeout):
        stop_pid(pid, timeout=2)
    if control_port:
        remove_tgtd_sockets(control_port)


def remove_tgtd_sockets(control_port: int) -> None:
    """tgtd leaves its management socket files behind when it stops or dies."""
    for f in (TGTD_RUN / f"socket.{control_port}", TGTD_RUN / f"socket.{control_port}.lock"):
        f.unlink(missing_ok=True)


def release_tgtd(pid: int, control_port: int = 0) -> str:
    """Stop a tgtd this lab (or bench) started -- unless it is not that tgtd
    any more, or it serves targets of others meanwhile (the machine's tgtd is
    shared: another lab or bench may have come to use it). Says what it did."""
    args = cmdline(pid)
    ours = bool(args) and os.path.basename(args[0]) == "tgtd"
    if not ours or not pid_alive(pid):
        return "tgtd it started is gone already"
    shown = _tgtadm(control_port, "--op", "show", "--mode", "target")
    others = parse_targets(shown.stdout.decode(errors="replace")) if shown.returncode == 0 else []
    if others:
        return f"left tgtd running: it serves {len(others)} target(s) of others"
    stop_tgtd(pid, control_port=control_port)
    return "stopped tgtd"


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
