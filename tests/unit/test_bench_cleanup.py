"""Benches clean up on any way out (bench/cleanup.py): each registered step
runs even when an earlier one fails, on an exception and on SIGTERM."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from bench.cleanup import teardown
    out = Path(sys.argv[1])

    def broken():
        raise OSError("this step fails")

    with teardown() as stack:
        stack.callback(lambda: (out / "first-started").write_text("cleaned"))
        stack.callback(broken)                  # a failing step stops none of the others
        stack.callback(lambda: (out / "second-started").write_text("cleaned"))
        if sys.argv[2] == "twice":
            def slow():
                (out / "cleaning").write_text("")
                time.sleep(2)               # a second signal arrives meanwhile
                (out / "slow-done").write_text("cleaned")
            stack.callback(slow)
        (out / "running").write_text("")
        if sys.argv[2] == "raise":
            raise RuntimeError("the bench failed")
        time.sleep(60)
""")


@pytest.mark.parametrize("how", ["raise", "sigterm", "sighup"])
def test_every_step_runs_on_any_way_out(tmp_path, how):
    script = tmp_path / "a_bench.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), how],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if how != "raise":
            wait_until(lambda: (tmp_path / "running").exists() or proc.poll() is not None, 30, "the bench running")
            proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGHUP)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0, err.decode()[-2000:]
    assert (tmp_path / "running").exists(), err.decode()[-2000:]
    assert (tmp_path / "first-started").read_text() == "cleaned"
    assert (tmp_path / "second-started").read_text() == "cleaned"
    assert b"this step fails" in err          # reported, not swallowed


def test_a_second_signal_does_not_abandon_the_cleanup(tmp_path):
    """``timeout`` relays the SIGINT it gets, so a bench run under it gets
    two: the second one interrupted the first cleanup step."""
    script = tmp_path / "a_bench.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), "twice"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (tmp_path / "running").exists() or proc.poll() is not None, 30, "the bench running")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: (tmp_path / "cleaning").exists() or proc.poll() is not None, 30, "cleaning up")
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0
    for step in ("slow-done", "first-started", "second-started"):
        assert (tmp_path / step).read_text() == "cleaned", err.decode()[-2000:]
