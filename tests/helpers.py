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
