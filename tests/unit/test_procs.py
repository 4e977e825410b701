"""cowfleet.procs: the one set of process helpers (alive, command line, stop)."""
from __future__ import annotations

import subprocess
import sys
import time

from cowfleet.procs import cmdline, pid_alive, stop_pid, wait_gone
from tests.helpers import wait_until


def test_cmdline_alive_and_stop():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "marker-arg"])
    try:
        wait_until(lambda: cmdline(proc.pid)[-1:] == ["marker-arg"], 10, "the child's exec")
        assert pid_alive(proc.pid)
        stop_pid(proc.pid, timeout=5, group=False)
        assert not pid_alive(proc.pid)
        assert cmdline(proc.pid) == []
    finally:
        proc.kill()
        proc.wait()


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout():
    proc = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                             "time.sleep(60)"], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline() == b"ready\n"
        t0 = time.monotonic()
        stop_pid(proc.pid, timeout=0.5)          # the whole group, SIGKILL after 0.5 s
        assert 0.4 < time.monotonic() - t0 < 5
        assert wait_gone(proc.pid, 1) and not pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_gone_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid) and cmdline(proc.pid) == []
    stop_pid(proc.pid, timeout=0.1)            # nothing to stop: no error
