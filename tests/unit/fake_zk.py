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
        # the zxid of each znode's last change, as ZooKeeper's stat has it (a
        # rolled-back transaction leaves its bump: a change marker only)
        self.zxid = 0
        self.mzxid: dict[str, int] = dict.fromkeys(self.data, 0)

    def _changed(self, path):
        self.zxid += 1
        self.mzxid[path] = self.zxid

    def get(self, path):
        if path not in self.data:
            raise NoNodeError(path)
        value, version = self.data[path]
        return value, SimpleNamespace(version=version, mzxid=self.mzxid.get(path, 0))

    def get_children(self, path):
        prefix = path.rstrip("/") + "/"
        return [p[len(prefix):] for p in self.data if p.startswith(prefix) and "/" not in p[len(prefix):]]

    def create(self, path, value=b""):
        if path in self.data:
            raise NodeExistsError(path)
        self.data[path] = (value, 0)
        self._changed(path)
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
        self._changed(path)
        return SimpleNamespace(version=self.data[path][1], mzxid=self.mzxid.get(path, 0))

    def exists(self, path):
        return SimpleNamespace(version=self.data[path][1]) if path in self.data else None

    def transaction(self):
        return FakeTransaction(self)


class FakeTransaction:
    """All or nothing, like ZooKeeper's multi: the results list holds each
    operation's outcome, an exception (and RolledBackError for the rest) on failure."""

    def __init__(self, zk: FakeZK):
        self.zk, self.ops = zk, []

    def create(self, path, value=b""):
        self.ops.append(("create", path, value, -1))

    def set_data(self, path, value, version=-1):
        self.ops.append(("set", path, value, version))

    def check(self, path, version):
        self.ops.append(("check", path, None, version))

    def delete(self, path, version=-1):
        self.ops.append(("delete", path, None, version))

    def commit(self):
        from kazoo.exceptions import RolledBackError
        setting = next((path for op, path, _v, _ver in self.ops if op == "set"), None)
        if setting is not None and self.zk.before_set:     # the other writer commits before this one
            hook, self.zk.before_set = self.zk.before_set, None
            hook(setting)
        saved = dict(self.zk.data)
        results = []
        for op, path, value, version in self.ops:
            try:
                if op == "create":
                    results.append(self.zk.create(path, value))
                elif op == "set":
                    results.append(self.zk.set(path, value, version))     # a stat, as kazoo's
                else:
                    if path not in self.zk.data:
                        raise NoNodeError(path)
                    if version != -1 and version != self.zk.data[path][1]:
                        raise BadVersionError(path)
                    if op == "delete":
                        del self.zk.data[path]
                    results.append(True)
            except Exception as exc:
                self.zk.data = saved
                return [RolledBackError()] * len(results) + [exc] + \
                    [RolledBackError()] * (len(self.ops) - len(results) - 1)
        return results
