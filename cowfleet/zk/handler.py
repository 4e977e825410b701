"""kazoo's threading handler with a cheaper ``select``.

kazoo's connection thread calls ``handler.select`` before every write,
before each of the two reads of every reply, and once per turn of its loop
(which sends one request a turn): ~4 calls a request. kazoo 2.11's
``selector_select`` builds a new epoll selector each time (epoll_create,
one epoll_ctl a descriptor, epoll_wait, close, and the ``selectors``
module's bookkeeping in Python) to work past select()'s limit on
descriptor numbers. ``poll`` has no such limit and needs no descriptor of
its own: one system call. Written by hand because kazoo takes a handler
but has no cheaper select to choose, and ``selectors.PollSelector`` keeps
most of the bookkeeping (measured below).

Measured here (bench/README.md, session 18), CPU of the client process:
a select 13.7 us with kazoo's, 7.7 with ``PollSelector``, 2.6 with this;
a ``get`` against a local ZooKeeper 214-273 us with kazoo's handler, 139-142
with this one (async gets 102-112 against 55-79). In bench/placement.py's
fleet (50 processes on two cores, each hosting 20 agents on one session) a
profile of a placement and its starts found kazoo's select in 25% of the
CPU under the profiler.
"""
from __future__ import annotations

import math
import select

from kazoo.handlers.threading import SequentialThreadingHandler

_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_WRITABLE = select.POLLOUT | select.POLLHUP | select.POLLERR


def _fd(obj) -> int:
    fd = obj if isinstance(obj, int) else obj.fileno()
    if fd < 0:                     # a closed socket: refused, as kazoo's select refuses one
        raise ValueError("Invalid file descriptor: -1")
    return fd


def poll_select(rlist, wlist, xlist, timeout: float | None = None) -> tuple[list, list, list]:
    """``select.select``'s contract (lists of the objects given that are
    ready; empty lists on timeout) on ``poll``: a readable object is one
    with data, an error or a hang-up to read, as select() reports it."""
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be non-negative")
    given = [[(obj, _fd(obj)) for obj in objs] for objs in (rlist, wlist, xlist)]
    masks: dict[int, int] = {}
    for pairs, mask in zip(given, (select.POLLIN, select.POLLOUT, select.POLLPRI)):
        for _, fd in pairs:
            masks[fd] = masks.get(fd, 0) | mask
    poller = select.poll()
    for fd, mask in masks.items():
        poller.register(fd, mask)
    # poll() takes milliseconds: round up, or a short timeout would spin
    got = dict(poller.poll(None if timeout is None else math.ceil(timeout * 1000)))
    if any(ev & select.POLLNVAL for ev in got.values()):
        raise ValueError("Invalid event mask or fd")     # a descriptor closed meanwhile
    return tuple([obj for obj, fd in pairs if got.get(fd, 0) & ready]      # type: ignore[return-value]
                 for pairs, ready in zip(given, (_READABLE, _WRITABLE, select.POLLPRI)))


class PollHandler(SequentialThreadingHandler):
    """kazoo's ``SequentialThreadingHandler`` whose ``select`` is ``poll_select``."""

    name = "sequential_threading_poll"

    def select(self, *args, **kwargs):
        return poll_select(*args, **kwargs)
