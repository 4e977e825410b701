"""This worker's watch-fed copy of the folders that lists are served from.

A list of 10 groups read straight from ZooKeeper is ~31 sequential reads
(each group, its instance list and instances, its status): ~12 ms of CPU a
request, ~190 req/s at most on two cores. So each worker mirrors the
collections with kazoo's ``TreeCache`` (one per folder and session, loaded
in the background on first use) and lists read the records from it.

What a list promises, and how:
- its *membership* is ZooKeeper's: the collection's children are always read
  from ZooKeeper itself, so an object created or deleted through any worker
  shows up (or is gone) in the very next list;
- a record the mirror does not hold yet (created a moment ago, or the mirror
  still loading, or re-syncing after a lost session) is read from ZooKeeper;
- a record it holds may trail a write made through *another* worker by the
  few milliseconds a watch takes. Single-object GETs never use the mirror:
  they, and every write, read ZooKeeper, so an object's ETag is exact.
"""
from __future__ import annotations

import threading

from kazoo.exceptions import NoNodeError
from kazoo.recipe.cache import TreeCache, TreeEvent

from cowfleet.zk import layout


class FolderCache:
    """One folder's TreeCache, re-made for each new session object (a new
    worker after gunicorn's fork), with a readiness flag: it is consulted
    only once loaded, and not while re-syncing after a lost session."""

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


class _Done:
    """What ``get_async`` returns: the answer already known."""

    def __init__(self, fn):
        try:
            self._value, self._exc = fn(), None
        except NoNodeError as exc:
            self._value, self._exc = None, exc

    def get(self, timeout=None):
        if self._exc is not None:
            raise self._exc
        return self._value


class MirrorReader:
    """The reads the services' views make of a KazooClient (``get``,
    ``get_children``, ``get_async``), answered from the mirror where it can
    (see the module's doc), from ZooKeeper otherwise."""

    def __init__(self, zk, caches: dict[str, TreeCache]):
        self.zk = zk
        self._caches = caches

    def _cache(self, path: str) -> TreeCache | None:
        for root, cache in self._caches.items():
            if path.startswith(root + "/"):
                return cache
        return None

    def get(self, path: str, watch=None):
        cache = self._cache(path)
        node = cache.get_data(path) if cache is not None and watch is None else None
        if node is None or node.stat is None:
            return self.zk.get(path, watch=watch)
        return node.data, node.stat

    def get_children(self, path: str, watch=None, include_data=False):
        cache = self._cache(path)       # a collection itself (no cache) is always read
        names = cache.get_children(path) if cache is not None and watch is None and not include_data else None
        if names is None:
            return self.zk.get_children(path, watch=watch, include_data=include_data)
        return list(names)

    def get_async(self, path: str, watch=None):
        cache = self._cache(path) if watch is None else None
        node = cache.get_data(path) if cache is not None else None
        if node is None or node.stat is None:      # a miss: still in flight with the others
            return self.zk.get_async(path, watch=watch)
        return _Done(lambda: (node.data, node.stat))

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
        self._folders = [FolderCache(r) for r in roots]

    def reader(self, zk) -> MirrorReader:
        loaded = {}
        for folder in self._folders:
            cache = folder.loaded(zk)
            if cache is not None:
                loaded[folder.path] = cache
        return MirrorReader(zk, loaded)
