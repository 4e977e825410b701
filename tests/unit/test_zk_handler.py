"""The poll-based select of the agents' kazoo handler keeps select()'s contract."""
import os
import socket
import time

import pytest

from cowfleet.zk.handler import PollHandler, poll_select


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_nothing_ready_times_out_with_empty_lists(pair):
    a, _ = pair
    t0 = time.monotonic()
    assert poll_select([a], [], [], 0.05) == ([], [], [])
    assert time.monotonic() - t0 >= 0.04       # waited (rounded up to whole ms, never down)


def test_a_socket_with_data_is_readable_and_the_objects_given_come_back(pair):
    a, b = pair
    other, _ = socket.socketpair()
    try:
        b.send(b"x")
        assert poll_select([other, a], [], [], 1.0) == ([a], [], [])
        assert poll_select([a.fileno()], [], [], 1.0) == ([a.fileno()], [], [])   # descriptors too
    finally:
        other.close()
        _.close()


def test_read_and_write_interest_in_one_socket(pair):
    a, b = pair
    assert poll_select([a], [a], [], 1.0) == ([], [a], [])
    b.send(b"x")
    assert poll_select([a], [a], [], 1.0) == ([a], [a], [])


def test_a_hang_up_reads_as_readable(pair):
    a, b = pair
    b.close()
    r, _, _ = poll_select([a], [], [], 1.0)
    assert r == [a] and a.recv(1) == b""        # as select(): the read then sees the end


def test_a_closed_socket_is_refused_like_kazoos_select(pair):
    a, _ = pair
    a.close()
    with pytest.raises(ValueError):
        poll_select([a], [], [], 0.01)


def test_a_descriptor_closed_under_it_is_refused():
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(ValueError):
            poll_select([r], [], [], 0.01)
    finally:
        os.close(w)


def test_a_negative_timeout_is_refused(pair):
    with pytest.raises(ValueError):
        poll_select([pair[0]], [], [], -1)


def test_the_handler_selects_with_it(pair):
    a, b = pair
    b.send(b"x")
    assert PollHandler().select([a], [], [], 1.0) == ([a], [], [])
