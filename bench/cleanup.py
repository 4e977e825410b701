"""What every bench does on its way out, whatever the way: normal end, any
exception, Ctrl-C, SIGTERM or SIGHUP (a ``timeout`` or a closed terminal).

``teardown()`` is a ``contextlib.ExitStack``: a bench registers how to stop
each thing right after starting it, and on exit every registered step runs,
last first, even when an earlier one raises (the stack chains the errors).
The signals are turned into exceptions so the stack unwinds: with Python's
default SIGTERM the process dies with nothing cleaned (issue 18: a run of
bench/placement.py stopped that way left its ZooKeeper, gunicorn, storage
agent, fleet process and tgt target running).
"""
from __future__ import annotations

import contextlib
import signal
import sys


class Interrupted(KeyboardInterrupt):
    """A signal asked the bench to stop (its number in ``signum``)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum, frame):
    raise Interrupted(signum)


def unwind_on_signals() -> None:
    """SIGTERM and SIGHUP raise ``Interrupted``; SIGINT raises KeyboardInterrupt
    even when the bench was started with it ignored (a background job)."""
    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _held(signum, frame):
    print(f"({signal.Signals(signum).name} while cleaning up: the cleanup goes on)", file=sys.stderr, flush=True)


def _hold_signals() -> None:
    # a handler that does nothing, not SIG_IGN: an ignored signal stays
    # ignored across exec, in every process a cleanup step starts
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _held)


@contextlib.contextmanager
def teardown():
    """``with teardown() as stack: ... stack.callback(stop, thing)``."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    unwind_on_signals()
    try:
        with contextlib.ExitStack() as stack:
            try:
                yield stack
            except KeyboardInterrupt as exc:
                print(f"\ninterrupted ({exc or 'SIGINT'}); cleaning up", file=sys.stderr, flush=True)
                raise
            finally:
                # the steps run to the end whatever arrives now: a second
                # signal (``timeout`` relays the SIGINT it got; an impatient
                # Ctrl-C) interrupted the first step and left 47 fleet
                # processes and ZooKeeper running (bench/placement.py)
                _hold_signals()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
