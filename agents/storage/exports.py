"""The node's exports: which copies its exporter serves, kept equal to the
verified copies it holds, and whether the exporter answers at all.

``Exports`` remembers what was exported (IQN -> master path): a copy counts
as held (``POST /v1/holds``) only while it is exported. ``ExporterHealth``
turns "the exporter answered this round or not" into what the agent does:
one slow answer decides nothing; FAILURES_DOWN rounds in a row and the node
is down (its replica records withdrawn, its membership unhealthy) until it
answers again.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from cowfleet.agents.storage.exporter import Exporter

FAILURES_DOWN = 2     # rounds in a row without an answer before the exporter (tgtd) counts as down

# ExporterHealth verdicts
ANSWERS, BACK, SLOW, WENT_DOWN, STILL_DOWN = "answers", "back", "slow", "went-down", "still-down"


def plan_targets(have: dict[str, list[str]], wanted: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """(targets to remove, targets to export) so that the node's targets
    (``have``: IQN -> backing files) become ``wanted`` (IQN -> master):
    each copy exported once, with its file, nothing left over."""
    remove = [iqn for iqn in have if iqn not in wanted]
    export = {iqn: path for iqn, path in wanted.items() if have.get(iqn) != [path]}
    return remove, export


class Exports:
    def __init__(self, exporter: Exporter, log: logging.Logger):
        self.exporter, self.log = exporter, log
        self.current: dict[str, str] = {}          # iqn -> master path, what the exporter serves for us
        self.lock = threading.Lock()

    def reconcile(self, wanted: Callable[[], dict[str, str]]) -> None:
        """The node's targets == ``wanted()`` (IQN -> master of every verified
        copy, read under the lock), e.g. after a crash or a restart."""
        with self.lock:
            have = self.exporter.list()
            wanted = wanted()
            remove, export = plan_targets(have, wanted)
            for iqn in remove:
                self.log.info("removing leftover target %s", iqn)
                self.exporter.unexport(iqn)
            for iqn, path in export.items():
                self.exporter.export(iqn, path)
            self.current = wanted

    def export(self, image: str, sha: str, path: str) -> str:
        iqn = self.exporter.target_name(image, sha)
        with self.lock:
            self.exporter.export(iqn, path)
            self.current[iqn] = path
        return iqn

    def unexport_path(self, path: str) -> None:
        with self.lock:
            for iqn in [i for i, p in self.current.items() if p == path]:
                self.exporter.unexport(iqn)
                self.current.pop(iqn, None)

    def forget(self) -> None:
        """The exporter died: nothing of ours is served any more."""
        with self.lock:
            self.current = {}

    def serves(self, iqn: str, path: str) -> bool:
        return self.current.get(iqn) == path


class ExporterHealth:
    def __init__(self):
        self.down = False        # the exporter did not answer: replicas withdrawn
        self.failures = 0        # rounds in a row it did not answer

    def answered(self) -> str:
        """BACK if it was down, else ANSWERS."""
        self.failures = 0
        if self.down:
            self.down = False
            return BACK
        return ANSWERS

    def failed(self) -> str:
        """SLOW (decide nothing this round), WENT_DOWN (just now) or STILL_DOWN."""
        self.failures += 1
        if self.failures < FAILURES_DOWN:
            return SLOW
        if not self.down:
            self.down = True
            return WENT_DOWN
        return STILL_DOWN
