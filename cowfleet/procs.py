"""Processes by pid, the one set of helpers (bottom layer): is it alive, what
is its command line, stop it. The lab, the test fixtures and the compute
agent's image sessions all use these."""
from __future__ import annotations

import os
import signal
import time


def cmdline(pid: int) -> list[str]:
    """The process's arguments ([] when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def pid_alive(pid: int) -> bool:
    """Is ``pid`` running? A zombie (exited, not reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and
    parentheses): state, ppid, ... ([] when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return []


def parent_pid(pid: int) -> int | None:
    """The process's parent (None when it is gone or unreadable)."""
    fields = _stat(pid)
    return int(fields[1]) if len(fields) > 1 else None


def session_id(pid: int) -> int | None:
    """The process's session (None when it is gone or unreadable)."""
    fields = _stat(pid)
    return int(fields[3]) if len(fields) > 3 else None


def cpu_seconds(pid: int) -> float:
    """The CPU the process has used, user and system (0 when it is gone)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if len(fields) > 12 else 0.0


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
    """SIGTERM (to the whole process group unless ``group`` is False), then
    SIGKILL if it lingers past ``timeout``."""
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
