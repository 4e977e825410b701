"""The real components of a cowfleet node, started without systemd.

Used by ``cowfleet lab`` and by the test fixtures alike, so what the tests
prove is what the lab runs.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait (reaping it if it is our child) until ``pid`` has exited."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return not pid_alive(pid)


def stop_pid(pid: int, timeout: float = 10.0, group: bool = True) -> None:
    """SIGTERM (the whole process group), then SIGKILL if it lingers."""
    def send(sig):
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    send(signal.SIGTERM)
    if not wait_gone(pid, timeout):
        send(signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


# -- ZooKeeper -----------------------------------------------------------------

ZK_CLASSPATH = "/usr/share/java/zookeeper.jar:/usr/share/java/*"


@dataclass
class ZooKeeperServer:
    """One standalone ZooKeeper server (Debian's package) on loopback."""
    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    pid: int | None = None

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 60) -> None:
        if not Path("/usr/share/java/zookeeper.jar").exists():
            raise LabError("ZooKeeper is not installed: apt-get install zookeeper (or run make setup)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.data_dir / "zoo.cfg"
        cfg.write_text(
            f"tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={self.data_dir / 'data'}\n"
            f"clientPort={self.port}\nclientPortAddress={self.host}\nmaxClientCnxns=0\n"
            "admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,mntr\n"
            "minSessionTimeout=1000\nmaxSessionTimeout=20000\n")
        log4j = self.data_dir / "log4j.properties"
        log4j.write_text("log4j.rootLogger=WARN, CONSOLE\n"
                         "log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n"
                         "log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n"
                         "log4j.appender.CONSOLE.layout.ConversionPattern=%d %p %c{1}: %m%n\n")
        java = shutil.which("java") or "/usr/bin/java"
        log = self.data_dir / "zookeeper.log"
        proc = spawn([java, "-Xmx256m", "-XX:+UseSerialGC", f"-Dlog4j.configuration=file:{log4j}",
                      "-Dzookeeper.jmx.log4j.disable=true",
                      "-cp", ZK_CLASSPATH, "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)],
                     log)
        self.pid = proc.pid
        wait_for(self.healthy, timeout, f"ZooKeeper on {self.hosts}", proc=proc, log=log)

    def healthy(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"ruok")
                return s.recv(16) == b"imok"
        except OSError:
            return False

    def stop(self) -> None:
        if self.pid:
            stop_pid(self.pid)
            self.pid = None


# -- libvirtd and tgtd (machine daemons, shared) ---------------------------------

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


def tgtd_running() -> bool:
    return subprocess.run(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "sys"],
                          capture_output=True).returncode == 0


def ensure_tgtd(log: Path, timeout: float = 20) -> int | None:
    """Start tgtd unless running; returns its pid if this call started it."""
    if not shutil.which("tgtd"):
        raise LabError("tgtd is not installed: apt-get install tgt")
    if tgtd_running():
        return None
    proc = spawn(["tgtd", "-f"], log)
    wait_for(tgtd_running, timeout, "tgtd", proc=proc, log=log)
    return proc.pid


def stop_tgtd(pid: int, timeout: float = 10.0) -> None:
    """tgtd ignores SIGTERM; its own shutdown request stops it at once.
    Signals remain the fallback (SIGKILL if it lingers)."""
    subprocess.run(["tgtadm", "--lld", "iscsi", "--op", "delete", "--mode", "system"],
                   capture_output=True)
    if not wait_gone(pid, timeout):
        stop_pid(pid, timeout=2)


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
