"""This worker's watch-fed copy of the records that lists are served from.

A list of 10 groups read straight from ZooKeeper is ~31 sequential reads
(each group, its instance list and instances, its status): ~12 ms of CPU a
request, ~190 req/s at most on two cores. So each worker keeps the records
and sub-folders (a group's instances) that its lists read.

Each is kept from the read that fetched it until ZooKeeper says it changed:
that read sets a one-shot watch, the watch drops the copy, and the next list
that wants it reads it again (and sets the watch again). Not kazoo's
``TreeCache``, which this replaced: it re-reads every changed znode at once in
every worker, so a write to a flavor cost 4 workers x (a watch event, a read
and its reply through three of kazoo's threads) -- ~2.5 ms of the service's
CPU per write at 200 req/s, a third of a changing PUT (bench/README.md) --
whether or not anything lists it before the next change; and while nothing
reads it again no watch is set, so a burst of writes costs each worker one
event. kazoo's watch recipes (``DataWatch``, ``ChildrenWatch``) re-read eagerly
too; none drops a copy on a change.

What a list promises, and how:
- its *membership* is ZooKeeper's: the collection's children are always read
  from ZooKeeper itself, so an object created or deleted through any worker
  shows up (or is gone) in the very next list;
- a record the mirror does not hold (never read yet, changed since, or
  dropped when the connection to ZooKeeper was lost or moved: its watches go
  with it) is read from ZooKeeper;
- a record it holds may trail a write made through *another* worker by the
  few milliseconds a watch takes. Single-object GETs never use the mirror:
  they, and every write, read ZooKeeper, so an object's ETag is exact.
"""
from __future__ import annotations

import threading

from kazoo.recipe.cache import TreeCache, TreeEvent

from cowfleet.zk import layout


class FolderCache:
    """One folder's TreeCache, re-made for each new session object (a new
    worker after gunicorn's fork), with a readiness flag: it is consulted
    only once loaded, and not while re-syncing after a lost session. For a
    folder looked up by key on every request and rarely written (the API
    tokens, service/auth.py), where re-reading each change at once is cheap."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._zk = None
        self._cache: TreeCache | None = None
        self._ready = threading.Event()

    def loaded(self, zk) -> TreeCache | None:
        """The cache if it is loaded for session ``zk``, else None (start it)."""
        with self._lock:
            if self._zk is not zk:
                ready = self._ready = threading.Event()
                cache = TreeCache(zk, self.path)

                def on_event(ev, ready=ready) -> None:     # kazoo's cache thread: never block
                    if ev.event_type == TreeEvent.INITIALIZED:
                        ready.set()
                    elif ev.event_type == TreeEvent.CONNECTION_LOST:
                        ready.clear()          # it re-syncs, then says INITIALIZED again
                cache.listen(on_event)
                try:
                    cache.start()
                except Exception:
                    cache.close()          # it had started its thread and listener already
                    raise
                if self._cache is not None:
                    try:
                        self._cache.close()
                    except Exception:
                        pass
                self._zk, self._cache = zk, cache
            return self._cache if self._ready.is_set() else None


class RecordCache:
    """The records and children one ZooKeeper session read for lists, each
    dropped by the watch its read set (see the module's doc)."""

    def __init__(self, zk):
        self.zk = zk
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], object] = {}    # ("data" | "children", path) -> answer
        # reads in flight: their answer is kept only if no watch (or state
        # change) dropped the key meanwhile -- a watch may fire between the
        # reply and the caller's keep()
        self._reading: dict[tuple[str, str], object] = {}
        zk.add_listener(self._on_state)

    def _on_state(self, _state) -> None:       # kazoo's thread: never block
        # suspended, reconnected or lost: kazoo does not set its watches again
        # on a new connection, so nothing held is followed any more
        with self._lock:
            self._held.clear()
            self._reading.clear()

    def _drop(self, kind: str, event) -> None:     # kazoo's watch thread
        with self._lock:
            self._held.pop((kind, event.path), None)
            self._reading.pop((kind, event.path), None)

    def data_changed(self, event) -> None:
        self._drop("data", event)

    def children_changed(self, event) -> None:
        self._drop("children", event)

    def held(self, key: tuple[str, str]):
        return self._held.get(key)

    def reading(self, key: tuple[str, str]) -> object:
        token = object()
        with self._lock:
            self._reading[key] = token
        return token

    def keep(self, key: tuple[str, str], token: object, answer) -> None:
        with self._lock:
            if self._reading.get(key) is token:
                del self._reading[key]
                self._held[key] = answer

    def forget(self, key: tuple[str, str], token: object) -> None:
        with self._lock:
            if self._reading.get(key) is token:
                del self._reading[key]


class _Kept:
    """What ``get_async`` returns on a miss: the read in flight, kept in the
    mirror when the caller takes its answer."""

    def __init__(self, cache: RecordCache, key, token, pending):
        self._cache, self._key, self._token, self._pending = cache, key, token, pending

    def get(self, timeout=None):
        try:
            answer = self._pending.get(timeout=timeout)
        except Exception:
            self._cache.forget(self._key, self._token)
            raise
        self._cache.keep(self._key, self._token, answer)
        return answer


class _Done:
    """What ``get_async`` returns on a hit: the answer already known."""

    def __init__(self, value):
        self._value = value

    def get(self, timeout=None):
        return self._value


class MirrorReader:
    """The reads the services' views make of a KazooClient (``get``,
    ``get_children``, ``get_async``), answered from the mirror where it can
    (see the module's doc), from ZooKeeper otherwise."""

    def __init__(self, zk, cache: RecordCache | None, roots: tuple[str, ...]):
        self.zk = zk
        self._cache = cache
        self._roots = tuple(r + "/" for r in roots)

    def _mirrored(self, path: str, watch) -> bool:
        # a collection itself (its membership) is always read; a caller's own watch too
        return self._cache is not None and watch is None and path.startswith(self._roots)

    def _read(self, kind: str, path: str, method, watcher):
        key = (kind, path)
        got = self._cache.held(key)
        if got is not None:
            return got
        token = self._cache.reading(key)
        try:
            answer = method(path, watch=watcher)
        except Exception:
            self._cache.forget(key, token)
            raise
        self._cache.keep(key, token, answer)
        return answer

    def get(self, path: str, watch=None):
        if not self._mirrored(path, watch):
            return self.zk.get(path, watch=watch)
        return self._read("data", path, self.zk.get, self._cache.data_changed)

    def get_children(self, path: str, watch=None, include_data=False):
        if include_data or not self._mirrored(path, watch):
            return self.zk.get_children(path, watch=watch, include_data=include_data)
        return list(self._read("children", path, self.zk.get_children, self._cache.children_changed))

    def get_async(self, path: str, watch=None):
        if not self._mirrored(path, watch):
            return self.zk.get_async(path, watch=watch)
        key = ("data", path)
        got = self._cache.held(key)
        if got is not None:
            return _Done(got)
        token = self._cache.reading(key)
        # a miss: in flight with the others
        return _Kept(self._cache, key, token, self.zk.get_async(path, watch=self._cache.data_changed))

    # the other reads a view may make go to ZooKeeper itself; a write never
    # goes through the mirror (a list view has none to make)
    PASSED_THROUGH = frozenset({"exists", "exists_async", "get_children_async", "state", "connected"})

    def __getattr__(self, name):
        if name in self.PASSED_THROUGH:
            return getattr(self.zk, name)
        raise AttributeError(f"the list mirror only reads: '{name}' is not one of its reads")


class Mirror:
    """The collections lists are served from, mirrored in this worker."""

    ROOTS = (layout.GROUPS, layout.IMAGES, layout.FLAVORS)

    def __init__(self, roots: tuple[str, ...] = ROOTS):
        self.roots = roots
        self._lock = threading.Lock()
        self._cache: RecordCache | None = None

    def reader(self, zk) -> MirrorReader:
        with self._lock:
            # one per session object (a new worker after gunicorn's fork makes its own)
            if self._cache is None or self._cache.zk is not zk:
                self._cache = RecordCache(zk)
            return MirrorReader(zk, self._cache, self.roots)
