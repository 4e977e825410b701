"""agents/storage/locate.Recent: a herd of callers reads once."""
import threading

import pytest

from cowfleet.agents.storage.locate import Recent


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_callers_within_the_time_get_the_last_read():
    clock, values = Clock(), iter(range(10))
    recent = Recent(lambda: next(values), 0.5, clock)
    assert [recent(), recent()] == [0, 0]
    clock.now += 0.4
    assert recent() == 0
    clock.now += 0.2                # 0.6 s after the read
    assert recent() == 1
    assert recent.reads == 2


def test_a_herd_during_a_read_waits_for_it_and_reads_nothing():
    started, release = threading.Event(), threading.Event()
    calls = []

    def read():
        calls.append(1)
        started.set()
        assert release.wait(10)
        return ["storage-1"]
    recent = Recent(read, 0.5)
    got = []
    first = threading.Thread(target=lambda: got.append(recent()))
    first.start()
    assert started.wait(10)
    herd = [threading.Thread(target=lambda: got.append(recent())) for _ in range(16)]
    for t in herd:
        t.start()
    release.set()
    for t in [first, *herd]:
        t.join(10)
    assert got == [["storage-1"]] * 17
    assert len(calls) == 1


def test_a_failed_read_is_not_kept():
    clock, answers = Clock(), [RuntimeError("connection loss"), ["storage-1"]]

    def read():
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a
    recent = Recent(read, 0.5, clock)
    with pytest.raises(RuntimeError):
        recent()
    assert recent() == ["storage-1"]          # read again at once, not 0.5 s later
