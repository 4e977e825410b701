"""Every transition of a group's instances, as ZooKeeper's watches deliver
them (kazoo ChildrenWatch on the group's instances folder and a DataWatch
per instance record), not sampled by polling: a violation that lasts a
millisecond is seen.

Each write is recorded with its transaction id (the record's ``mzxid``),
and ``check`` replays the records in that order: ZooKeeper's own order of
the writes, whatever the order in which the callbacks ran. A watch re-reads
the record it fires for, so two writes to one record close together would
show as one; the record's version says so (``missed``), and such a gap is
reported, never silently skipped.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby

from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from cowfleet.models import Instance, InstanceState
from cowfleet.zk import layout

GONE = "gone"           # the record was deleted
UNSEEN = "unseen"       # created, but its first versions were not seen (counted live, not ready)


@dataclass(frozen=True)
class Seen:
    zxid: int           # the write's transaction id: ZooKeeper's order of all writes
    t: float            # when the watch delivered it (time.monotonic)
    instance: str
    version: int        # the record's version (-1 for GONE)
    state: str
    image: str = ""
    flavor: str = ""


@dataclass
class Replay:
    """What ``GroupTransitions.check`` found."""
    transitions: int = 0
    min_ready: int = 0
    max_live: int = 0
    missed: list[str] = field(default_factory=list)        # "<id> v<a>..v<b>": versions not seen
    violations: list[str] = field(default_factory=list)
    final: dict[str, Seen] = field(default_factory=dict)    # live instances at the end


class GroupTransitions:
    def __init__(self, zk, group: str):
        self.zk, self.group = zk, group
        self.folder = layout.group_instances(group)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._stopped = False
        ChildrenWatch(zk, self.folder, self._children)

    # -- watches (kazoo's callback thread) ------------------------------------
    def _children(self, children):
        if self._stopped:
            return False
        for iid in children:
            with self._lock:
                if iid in self._watched:
                    continue
                self._watched.add(iid)
            DataWatch(self.zk, f"{self.folder}/{iid}", partial(self._record, iid))
        return True

    def _record(self, iid: str, data, stat):
        if self._stopped:
            return False
        now = time.monotonic()
        if stat is None:
            # deleted: the folder's pzxid (its last child change, read now) is
            # at or after the delete -- later only if another child changed since
            folder = self.zk.exists(self.folder)
            with self._lock:
                last = max((s.zxid for s in self.seen if s.instance == iid), default=0)
                zxid = folder.pzxid if folder else last + 1
                self.seen.append(Seen(max(zxid, last + 1), now, iid, -1, GONE))
            return False
        inst = Instance.from_bytes(data)
        with self._lock:
            if stat.version > 0 and not any(s.instance == iid for s in self.seen):
                self.seen.append(Seen(stat.czxid, now, iid, 0, UNSEEN))
            self.seen.append(Seen(stat.mzxid, now, iid, stat.version, inst.state, inst.image, inst.flavor))
        return True

    def stop(self) -> None:
        """The watches end at their next event (kazoo has no other way)."""
        self._stopped = True

    # -- reading ---------------------------------------------------------------
    def current(self) -> dict[str, Seen]:
        """The latest record of every instance not deleted, as seen so far."""
        with self._lock:
            seen = sorted(self.seen, key=lambda s: (s.zxid, s.version))
        out: dict[str, Seen] = {}
        for s in seen:
            if s.state == GONE:
                out.pop(s.instance, None)
            else:
                out[s.instance] = s
        return out

    def mark(self) -> int:
        """The zxid of the last write seen: ``check(after=...)`` starts there."""
        with self._lock:
            return max((s.zxid for s in self.seen), default=0)

    def check(self, size: int, max_unavailable: int, max_surge: int, after: int = 0) -> Replay:
        """Replay every write in zxid order; after each transaction (writes
        later than ``after``) the group must hold at least ``size -
        max_unavailable`` ready instances and at most ``size + max_surge``
        live (not terminating) ones."""
        with self._lock:
            seen = sorted(self.seen, key=lambda s: (s.zxid, s.version))
        out = Replay(min_ready=size, max_live=0)
        state: dict[str, Seen] = {}
        for zxid, writes in groupby(seen, key=lambda s: s.zxid):
            writes = list(writes)
            for s in writes:
                before = state.get(s.instance)
                if before is not None and s.version > 0 and s.version != before.version + 1 \
                        and before.state != UNSEEN:
                    out.missed.append(f"{s.instance} v{before.version + 1}..v{s.version - 1}")
                if s.state == GONE:
                    if before is not None and before.state != InstanceState.TERMINATING and zxid > after:
                        out.violations.append(f"zxid {zxid}: {s.instance} deleted while {before.state}")
                    state.pop(s.instance, None)
                else:
                    state[s.instance] = s
            if zxid <= after:
                continue
            out.transitions += len(writes)
            live = [s for s in state.values() if s.state != InstanceState.TERMINATING]
            ready = sum(s.state == InstanceState.READY for s in live)
            out.min_ready = min(out.min_ready, ready)
            out.max_live = max(out.max_live, len(live))
            where = (f"zxid {zxid} ({', '.join(f'{s.instance}={s.state}' for s in writes)}): "
                     f"{ready} ready, {len(live)} live")
            if ready < size - max_unavailable:
                out.violations.append(f"{where}: below size - max_unavailable = {size - max_unavailable}")
            if len(live) > size + max_surge:
                out.violations.append(f"{where}: above size + max_surge = {size + max_surge}")
        out.final = {i: s for i, s in state.items() if s.state != InstanceState.TERMINATING}
        return out
