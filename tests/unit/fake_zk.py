"""An in-memory stand-in for the few kazoo calls the service's read and
write paths make (get, get_children, create, set), for unit tests that must
not reach ZooKeeper. ``before_set`` lets a test slip a concurrent writer in
between a read and a conditional write."""
from __future__ import annotations

from types import SimpleNamespace

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError


class FakeZK:
    def __init__(self, nodes: dict[str, bytes] | None = None):
        self.data: dict[str, tuple[bytes, int]] = {p: (v, 0) for p, v in (nodes or {}).items()}
        self.before_set = None   # called with the path before each set()
        self.sets = 0

    def get(self, path):
        if path not in self.data:
            raise NoNodeError(path)
        value, version = self.data[path]
        return value, SimpleNamespace(version=version)

    def get_children(self, path):
        prefix = path.rstrip("/") + "/"
        return [p[len(prefix):] for p in self.data if p.startswith(prefix) and "/" not in p[len(prefix):]]

    def create(self, path, value=b""):
        if path in self.data:
            raise NodeExistsError(path)
        self.data[path] = (value, 0)
        return path

    def set(self, path, value, version=-1):
        if self.before_set:
            hook, self.before_set = self.before_set, None
            hook(path)
        self.sets += 1
        if path not in self.data:
            raise NoNodeError(path)
        if version != -1 and version != self.data[path][1]:
            raise BadVersionError(path)
        self.data[path] = (value, self.data[path][1] + 1)
        return SimpleNamespace(version=self.data[path][1])
