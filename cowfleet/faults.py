"""Fault points: places in the agents where a test can stop a process to
kill it at exactly that step (crash tests), and nothing otherwise.

With ``COWFLEET_FAULT_PAUSE=/path`` set and that file present, a process
reaching a point says so in ``/path.<point>.<who>`` (its pid) and waits there
until the file is removed. The file may name the points to stop at
(``start.paused,terminate.files``); empty, it stops at every point. So a test
arms a running agent by writing the file, with no restart. Unset, or with no
file, a point costs an environment lookup and a stat.
"""
from __future__ import annotations

import os
import time

PAUSE = "COWFLEET_FAULT_PAUSE"

# every point there is, in the order a start or a terminate passes them
POINTS = (
    "before-commit",            # a coordinator, before its (first) placement transaction
    "placement.chunk",          # a coordinator, between two placement transactions of one group
    "start.allocated",          # the instance's address is allocated (in memory), not yet on its record
    "start.addressed",          # the instance's address and MAC are on its record
    "start.attached",           # its image session is up
    "start.overlay",            # its overlay exists
    "start.seed-partial",       # its NoCloud seed is written under a temporary name, not yet renamed
    "start.seeded",             # its NoCloud seed exists
    "start.paused",             # its domain exists, created paused (not yet resumed); a clone's
                                # restored, its NIC and seed not yet plugged
    "start.domain",             # its domain runs; its record does not say so yet
    "terminate.destroyed",      # its domain is gone
    "terminate.files",          # its overlay, seed and console are gone; records not yet
    "session.stop",             # the last user of an image session is gone, the session not yet
    "template.booting",         # a warm-clone template's domain boots, its folder half made
    "template.saved",           # its save image is written and its layer frozen, not yet renamed whole
    "spare.made",               # a warm spare is restored, paused, not yet in the agent's pool
    "spare.moved",              # a claimed spare's console and overlay are the instance's, its
                                # domain's metadata not yet
)


def fault_point(name: str, who: str = "") -> None:
    pause = os.environ.get(PAUSE)
    if not pause or not os.path.exists(pause):
        return
    try:
        with open(pause) as fh:
            only = fh.read().strip()
    except OSError:
        return
    if only and name not in only.split(","):
        return
    with open(f"{pause}.{name}.{who}", "w") as fh:
        fh.write(str(os.getpid()))
    while os.path.exists(pause):
        time.sleep(0.05)
