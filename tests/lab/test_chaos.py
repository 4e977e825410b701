"""The fault campaign's short run (bench/chaos.py): a few cycles of random
operations and kill -9 of random components on a racks lab of its own (fake
hypervisor); every invariant holds after each quiet period."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import _workdir
from tests.lab.conftest import SSH_CONFIG

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(bool(SSH_CONFIG), reason="kills processes: the racks lab only"),
              pytest.mark.timeout(900)]

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def test_a_short_fault_campaign_keeps_every_invariant():
    out = _workdir("cowfleet-chaos-test-") / "result.json"
    try:
        # a fixed seed, so that a failure replays: its five faults are one of
        # each kind (a gunicorn worker, a storage agent, the gunicorn master,
        # a compute agent, a ZooKeeper member)
        proc = subprocess.run([sys.executable, str(CHAOS), "--cycles", "5", "--seed", "29", "--json", str(out)],
                              capture_output=True, text=True, timeout=850)
        tail = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith(("10.77.", "127.0.")))
        assert out.exists(), proc.stderr[-3000:] + tail[-3000:]
        result = json.loads(out.read_text())
        assert result["violations"] == [], tail[-3000:]
        assert proc.returncode == 0, tail[-3000:]
        assert len(result["faults"]) == 5 and sum(result["faults"].values()) == 5, result["faults"]
        assert len(result["converge_seconds"]) == 5
        assert sum(result["operations"].values()) >= 5
    finally:
        out.unlink(missing_ok=True)
        out.parent.rmdir()
