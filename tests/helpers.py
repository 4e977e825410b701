"""Helpers for tests."""
from __future__ import annotations


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    """Wait on a condition (never a fixed sleep); fail saying what we waited for."""
    import time
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def qmp(hyper, domain: str, command: str, **arguments):
    """A QMP command's answer from a libvirt domain's qemu (what the device
    really has, where the domain XML says what libvirt asked for)."""
    import json

    import libvirt_qemu          # here: unit tests import this module without libvirt
    cmd = {"execute": command, **({"arguments": arguments} if arguments else {})}
    answer = libvirt_qemu.qemuMonitorCommand(hyper._conn().lookupByName(domain), json.dumps(cmd), 0)
    return json.loads(answer)["return"]
