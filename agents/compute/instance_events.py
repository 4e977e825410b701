"""A compute agent's Started and Ready events, merged in bursts.

An agent tells a group when each instance's domain starts and when its
guest is ready (cowfleet/zk/events.py keeps a group's newest 200 events).
One event each was two ZooKeeper creates an instance, and the pruning
deleted nearly all of them again: a 10,000-instance group wrote 20,000
events and removed 19,800, to keep 200. Now an agent writes a Normal event
at once when it wrote none in the last ``WINDOW``; those that come within
the window are held, and then each group's Started (or Ready) go as one
event naming the instances, the window staying open while they keep
coming. A lone event keeps its per-instance form (its ``instance`` set), so
a small group's story reads as before, and as soon. Warnings (Waiting,
Failed) are never held: they are written at once, after whatever this agent
holds, so an instance's Started still comes before its Failed.

Not a kazoo recipe: events are best-effort accounts for people, and what is
merged is a message, not coordination.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from cowfleet.models import Event, EventReason, EventType

WINDOW = 0.5        # s after a Normal event written during which the next ones are held and merged
SHOWN = 5           # instance ids a merged event names (then "and N more")


class InstanceEvents:
    """An agent's instance events, written through ``record(group, event)``:
    Normal ones merged per (group, reason) while they come in a burst."""

    def __init__(self, record: Callable[[str, Event], object], window: float = WINDOW):
        self._record = record
        self._window = window
        self._held: dict[tuple[str, str], list[Event]] = {}      # (group, reason) -> events, first held first
        self._lock = threading.Lock()
        # held while writing: a warning waits for a batch being written (its
        # instance's Started may be in it), and batches go one at a time
        self._writing = threading.RLock()
        self._timer: threading.Timer | None = None               # the open window's end

    def add(self, group: str, event: Event) -> None:
        """Write the event now (a Warning, or the first Normal one of a
        quiet spell) or hold it until the window ends."""
        with self._writing:
            if event.type == EventType.NORMAL:
                with self._lock:
                    if self._timer is not None:          # a window is open: join the burst
                        self._held.setdefault((group, event.reason), []).append(event)
                        return
                    self._open_window()
            else:
                self.flush()
            self._record(group, event)

    def _open_window(self) -> None:
        self._timer = threading.Timer(self._window, self._window_ends)
        self._timer.daemon = True
        self._timer.start()

    def _window_ends(self) -> None:
        """Write what was held; while something was, keep the window open."""
        with self._writing:
            with self._lock:
                held, self._held = self._held, {}
                self._timer = None
                if held:
                    self._open_window()
            self._write(held)

    def flush(self) -> None:
        """Write everything held now (a warning, the agent's shutdown)."""
        with self._writing:
            with self._lock:
                held, self._held = self._held, {}
            self._write(held)

    def _write(self, held: dict[tuple[str, str], list[Event]]) -> None:
        for (group, _reason), batch in held.items():     # in the order first held
            self._record(group, merged(batch))


# a merged event's text, by reason: (count, node, the ids named)
SAID = {
    EventReason.STARTED: lambda n, node, named: f"{n} domains started on {node}: {named}",
    EventReason.READY: lambda n, node, named: f"{n} guests ready on {node}: {named}",
}


def merged(batch: list[Event]) -> Event:
    """One event for a batch of the same group and reason: the event itself
    when alone; else one naming its instances (no ``instance`` of its own),
    at the time of the first."""
    if len(batch) == 1:
        return batch[0]
    first = batch[0]
    ids = [e.instance for e in batch if e.instance]
    named = ", ".join(ids[:SHOWN]) + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")
    say = SAID.get(first.reason, lambda n, node, named: f"{n} instances: {named}")
    return Event(reason=first.reason, message=say(len(batch), first.node, named), type=first.type,
                 instance=None, node=first.node,
                 generation=max((e.generation for e in batch if e.generation is not None), default=None),
                 source=first.source, time=first.time)
