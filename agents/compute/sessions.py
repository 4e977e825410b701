"""Image sessions: one ``qemu-storage-daemon`` per image per compute host.

The daemon opens the image's read-only iSCSI LUN with qemu's user-space
initiator (no kernel module) and exports it read-only on a local NBD unix
socket; every instance's qcow2 overlay on this host is backed by that export
(``nbd+unix:///img?socket=SOCK``). Nothing of the master is copied: blocks
stream over iSCSI as guests read them.

State lives on disk, so it survives agent restarts: ``ROOT/<image>-<sha12>/``
holds ``qsd.pid``, ``nbd.sock`` and ``session.json`` (``<image>-<sha12>~N/``:
a later generation, made while instances still use one whose storage node
serves the image no more). The daemon runs in its
own session (``--daemonize``): a restarted agent adopts it by its pid file.
Who uses a session is read from the overlays on disk (their qcow2 header
names the socket), never only from memory; callers serialise "attach +
create overlay" and "no overlay left -> stop" per image with ``lock(base_of(key))``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import shutil
import signal
import struct
import subprocess
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from cowfleet.procs import cmdline, parent_pid, session_id, stop_pid, wait_gone
from cowfleet.protocol import LocateAnswer

log = logging.getLogger(__name__)

QEMU_USER = "libvirt-qemu"        # libvirt's qemu runs as this user: it must reach the socket
EXPORT_NAME = "img"
ATTACH_TIMEOUT = 20.0
# A UNIX socket's path has at most 107 bytes, which <state dir>/sessions/
# <image>-<sha12>~N/nbd.sock exceeds easily (a racks-lab node's state dir
# alone is ~80). Each session's folder is therefore also reached by a short
# symlink named by a hash of its real path, and the socket is named through it.
RUN_DIR = Path("/run/cowfleet/sessions")


class SessionError(RuntimeError):
    pass


@dataclass
class Session:
    key: str
    image: str
    sha256: str
    format: str
    node: str                # the storage node whose LUN is open
    portal: str
    target: str
    socket: str
    pid: int = 0

    @property
    def url(self) -> str:
        """The overlays' backing file."""
        return nbd_url(self.socket, self.key)


def nbd_url(socket: str, export: str = EXPORT_NAME) -> str:
    """An NBD export over a UNIX socket as qemu names it; a session's export
    is named by its key, so an overlay's header says which session backs it
    even when the socket's short link is gone (after a reboot)."""
    return f"nbd+unix:///{export}?socket={socket}"


GENERATION = "~"        # <base>~N: a later session of the same image (see SessionManager.next_key)


def session_key(image: str, sha256: str) -> str:
    """The base key of an image's sessions on a host; the first session has it."""
    return f"{image}-{sha256[:12]}"


def base_of(key: str) -> str:
    return key.split(GENERATION)[0]


def _generation(key: str) -> int:
    _, _, n = key.partition(GENERATION)
    return int(n) if n.isdigit() else 0


def qcow2_backing(path: str | os.PathLike) -> str | None:
    """The backing file named in a qcow2 header (no qemu-img: read per
    overlay on every reconcile)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
            if len(head) < 20 or head[:4] != b"QFI\xfb":
                return None
            offset, size = struct.unpack(">QI", head[8:20])
            if not offset or not size or size > 4096:
                return None
            fh.seek(offset)
            return fh.read(size).decode(errors="replace")
    except OSError:
        return None


def _qsd_cmdline(pid: int) -> list[str]:
    """The process's arguments if it is a qemu-storage-daemon, else []."""
    args = cmdline(pid)
    return args if args and os.path.basename(args[0]) == "qemu-storage-daemon" else []


def _is_qsd(pid: int, needle: str) -> bool:
    return any(needle in a for a in _qsd_cmdline(pid))


def short_link(session_dir: str | os.PathLike) -> Path:
    """The short path of a session's folder (a symlink under RUN_DIR)."""
    return RUN_DIR / hashlib.sha256(str(Path(session_dir)).encode()).hexdigest()[:16]


def session_dir_of(cmdline: list[str]) -> Path | None:
    """The real folder of the session a daemon serves (its socket's folder,
    through the short link)."""
    for arg in cmdline:
        _, found, rest = arg.partition("addr.path=")
        if found:
            return Path(os.path.realpath(Path(rest.split(",")[0]).parent))
    return None


def daemons_under(root: str | os.PathLike) -> dict[int, list[str]]:
    """pid -> cmdline of every qemu-storage-daemon serving a session under
    ``root``. A daemon being started shows once. With ``--daemonize`` qemu
    forks twice: the first child calls setsid(), forks the daemon and exits
    (a zombie its parent does not reap), and the parent (same command line)
    waits until the daemon has opened the iSCSI LUN, up to seconds. The
    daemon's parent is then init, not the waiting one, so the waiting one is
    found as the parent of the daemon's session leader (a CI run saw two
    daemons for one session while a re-made session opened its LUN)."""
    real = os.path.realpath(root) + "/"
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        args = _qsd_cmdline(int(entry))
        where = session_dir_of(args)
        if where is not None and (str(where) + "/").startswith(real):
            out[int(entry)] = args
    waiting = {up for pid in out for up in (parent_pid(pid), parent_pid(session_id(pid) or 0))
               if up != pid and up in out and out[up] == out[pid]}
    return {pid: args for pid, args in out.items() if pid not in waiting}


def stop_session_daemon(pid: int) -> None:
    """SIGTERM a session's qemu-storage-daemon, SIGKILL after 5 s."""
    stop_pid(pid, timeout=5.0, group=False)


def kill_session_daemon(pid: int) -> None:
    """SIGKILL a session's daemon and wait until it is gone (its socket is
    then free for the next one)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_gone(pid, 5.0)


def kill_all_under(root: str | os.PathLike) -> int:
    """Stop every session daemon under ``root`` and remove their short links
    (lab tear-down, tests)."""
    pids = daemons_under(root)
    for pid in pids:
        stop_session_daemon(pid)
    real = os.path.realpath(root) + "/"
    for link in RUN_DIR.glob("*") if RUN_DIR.is_dir() else ():
        if link.is_symlink() and (os.path.realpath(link) + "/").startswith(real):
            link.unlink(missing_ok=True)
    return len(pids)


def remove_dangling_links(min_age: float = 60.0, run_dir: Path | None = None) -> list[str]:
    """Remove short links whose agent's sessions folder is gone: left by an
    agent whose whole state folder was removed without its sessions being
    stopped (a lab's folder deleted after a kill). A live agent's sessions
    folder always exists, so its links -- even one whose session folder is
    between a stop and the next start -- are never touched; and only links
    older than ``min_age`` s. Errors are skipped: this is housekeeping."""
    run_dir = run_dir or RUN_DIR
    removed = []
    now = time.time()
    for link in run_dir.glob("*") if run_dir.is_dir() else ():
        try:
            if not link.is_symlink() or now - link.lstat().st_mtime <= min_age:
                continue
            target = Path(os.readlink(link))
            if not target.parent.exists():          # <state dir>/sessions itself is gone
                link.unlink()
                removed.append(link.name)
        except OSError:
            continue                    # removed by another agent meanwhile, or not ours to read
    return removed


class Replicas(Protocol):
    """What choosing a session asks of the cluster: the compute agent answers
    from ZooKeeper and the storage leaders (agents/compute/agent.py), the
    unit tests from a table."""

    def recorded(self, session: Session) -> bool:
        """Whether the session's storage node has a replica record of its image."""

    def locate(self, image: str) -> LocateAnswer | None:
        """Where the image's copies are now, nearest first."""

    def in_use(self, key: str) -> bool:
        """Whether an overlay or a template on this host reads through session ``key``."""


@dataclass
class Choice:
    """A new instance's session (``attached``: made by this choice, so that
    the caller's failed start may stop it again), or why there is none:
    ``wait`` is "no-replica" (none reachable now) or "attach-failed"
    (``error`` says why)."""
    session: Session | None = None
    attached: bool = False
    wait: str = ""
    error: str = ""


@dataclass
class Healing:
    """What ``heal`` did to a session its guests' reads failed on: "unused"
    (the reconcile stops it), "served" (its storage node serves it: nothing
    to do), "no-replica" (none to move to: its guests wait), "failed"
    (``error``), or "repointed" (to ``session.node`` in ``ms``)."""
    outcome: str
    session: Session | None = None
    was: Session | None = None
    ms: float = 0.0
    error: str = ""


def _holders(where: LocateAnswer | None, sha256: str) -> list[dict]:
    """The replicas of these bytes in a locate answer (another sha256 is not
    a copy of the session's image)."""
    return where.replicas if where is not None and where.sha256 == sha256 else []


class SessionManager:
    def __init__(self, root: str | os.PathLike, qemu_user: str = QEMU_USER):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        try:
            self.qemu_uid = pwd.getpwnam(qemu_user).pw_uid
        except KeyError:
            self.qemu_uid = None
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # -- paths and locks --------------------------------------------------------
    def lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    def dir(self, key: str) -> Path:
        return self.root / key

    def socket(self, key: str) -> Path:
        """The session's NBD socket, named through its short link (RUN_DIR)."""
        return short_link(self.dir(key)) / "nbd.sock"

    def link(self, key: str) -> Path:
        """Make the short link to the session's folder (its socket is named through it)."""
        link, d = short_link(self.dir(key)), self.dir(key)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        os.chmod(RUN_DIR.parent, 0o755)       # qemu (another user) reaches the socket through it
        os.chmod(RUN_DIR, 0o755)
        if os.path.realpath(link) != os.path.realpath(d):
            link.unlink(missing_ok=True)
            link.symlink_to(d)
        return link

    def key_of_backing(self, backing: str | None) -> str | None:
        """The session an overlay's backing file points at, if one of ours."""
        if not backing or not backing.startswith("nbd+unix://"):
            return None
        url = urllib.parse.urlparse(backing)
        sock = Path(urllib.parse.parse_qs(url.query).get("socket", [""])[0])
        if sock.parent.parent == self.root:          # a socket named by its real folder (before links)
            return sock.parent.name
        key = url.path.lstrip("/")                   # the export is named by the session's key,
        if key and short_link(self.dir(key)) == sock.parent:     # and the link by our folder of it
            return key
        return None

    def key_of_overlay(self, path: str | os.PathLike) -> str | None:
        return self.key_of_backing(qcow2_backing(path))

    # -- state on disk ----------------------------------------------------------
    def get(self, key: str) -> Session | None:
        """The session if its daemon runs and its socket exists."""
        meta = self.dir(key) / "session.json"
        pidfile = self.dir(key) / "qsd.pid"
        try:
            session = Session(**json.loads(meta.read_text()))
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError, TypeError):
            return None
        if not _is_qsd(pid, f"addr.path={self.socket(key)}") or not self.socket(key).exists():
            return None
        session.pid = pid
        return session

    def record(self, key: str) -> Session | None:
        """What the session was made for (its session.json), whether or not
        its daemon still runs: a dead one is re-made from it."""
        try:
            return Session(**json.loads((self.dir(key) / "session.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def list(self) -> dict[str, Session | None]:
        """key -> live session (None: a folder whose daemon is gone)."""
        return {d.name: self.get(d.name) for d in self.root.iterdir() if d.is_dir()}

    def current(self, base: str) -> Session | None:
        """The image's newest live session: the one new instances use. An
        older one lives on while instances of it run (it reads from a
        storage node that no longer serves the image; its own are not moved)."""
        live = [s for k, s in self.list().items() if s is not None and base_of(k) == base]
        return max(live, key=lambda s: _generation(s.key), default=None)

    def next_key(self, base: str) -> str:
        """A key for a new session of the image beside the ones on disk."""
        used = [_generation(k) for k in self.list() if base_of(k) == base]
        return f"{base}{GENERATION}{max(used) + 1}" if used else base

    # -- attach / stop ------------------------------------------------------------
    def attach(self, image: str, sha256: str, fmt: str, replicas: list[dict],
               key: str | None = None) -> Session:
        """The live session ``key`` (default: the image's base key), or a new
        one on the first replica that can be opened. The caller holds
        ``lock(base_of(key))``."""
        key = key or session_key(image, sha256)
        live = self.get(key)
        if live is not None:
            return live
        self._clear(key)
        errors = []
        for r in replicas:
            if not r.get("portal") or not r.get("target"):
                continue
            try:
                return self._spawn(key, image, sha256, fmt, r)
            except SessionError as exc:
                errors.append(f"{r.get('node')}: {exc}")
                log.warning("attaching %s from %s failed: %s", image, r.get("node"), exc)
                self._clear(key)
        raise SessionError("; ".join(errors) or f"no replica of '{image}' names an iSCSI target")

    def _spawn(self, key: str, image: str, sha256: str, fmt: str, r: dict) -> Session:
        d = self.dir(key)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        self.link(key)
        sock, pidfile = self.socket(key), d / "qsd.pid"
        portal, target = r["portal"], r["target"]
        cmd = ["qemu-storage-daemon",
               "--blockdev", f"driver=iscsi,transport=tcp,portal={portal},target={target},lun=1,"
                             "node-name=base,read-only=on",
               "--nbd-server", f"addr.type=unix,addr.path={sock}",
               "--export", f"type=nbd,id=exp0,node-name=base,name={key},writable=off",
               "--pidfile", str(pidfile), "--daemonize"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ATTACH_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SessionError(f"qemu-storage-daemon did not open {target} at {portal} "
                               f"within {ATTACH_TIMEOUT:.0f}s")
        if proc.returncode != 0:
            raise SessionError(f"qemu-storage-daemon: {(proc.stderr or proc.stdout).strip()[-300:]}")
        if self.qemu_uid is not None:
            os.chown(sock, self.qemu_uid, -1)
            os.chmod(sock, 0o600)
        else:
            os.chmod(sock, 0o666)
        session = Session(key=key, image=image, sha256=sha256, format=fmt, node=r.get("node", ""),
                          portal=portal, target=target, socket=str(sock))
        (d / "session.json").write_text(json.dumps(asdict(session)))
        live = self.get(key)
        if live is None:
            raise SessionError("qemu-storage-daemon exited right after starting")
        log.info("session %s: %s from %s (%s), pid %d", key, target, r.get("node"), portal, live.pid)
        return live

    def repoint(self, key: str, replicas: list[dict]) -> Session:
        """Make session ``key`` read from the first of ``replicas`` that can
        be opened, under the same key and so the same socket, while
        instances use it: their qemu's NBD client reconnects to the socket by
        itself (the requests in flight when the old daemon goes fail, and
        the disk's error policy pauses the guest until the agent resumes
        it). The old daemon is killed, not asked to stop: it may wait
        forever on a storage node that is gone, and it has nothing to flush
        (read-only). Caller holds ``lock(base_of(key))``."""
        was = self.record(key)
        if was is None:
            raise SessionError(f"session {key} has no record to re-make it from")
        old = self.get(key)
        if old is not None:
            kill_session_daemon(old.pid)
        try:
            return self.attach(was.image, was.sha256, was.format, replicas, key=key)
        except SessionError:
            # its instances still use it (paused on their reads meanwhile):
            # the record stays, so that a later try can re-make it
            self.dir(key).mkdir(parents=True, exist_ok=True)
            (self.dir(key) / "session.json").write_text(json.dumps(asdict(was)))
            raise

    # -- the choice of a session, and its repair --------------------------------
    def served(self, session: Session, replicas: Replicas) -> tuple[bool, LocateAnswer | None]:
        """Whether the session's storage node still serves its image: its
        replica record says so, or (a record may be missing for a round, e.g.
        that agent restarting, while it serves) the storage leaders do. Also
        their answer, when they were asked."""
        if not session.node or replicas.recorded(session):
            return True, None
        where = replicas.locate(session.image)
        return session.node in {r.get("node") for r in _holders(where, session.sha256)}, where

    def choose(self, image: str, sha256: str, fmt: str, replicas: Replicas) -> Choice:
        """The session a new instance of the image reads through: the host's
        current one while its storage node still serves the image, else a new
        one on a replica found now. A session whose node serves the image no
        more is left to the instances that use it (new ones get the next
        generation) or, unused, stopped and made again. Caller holds
        ``lock(session_key(image, sha256))``."""
        base = session_key(image, sha256)
        session = self.current(base)
        key = session.key if session is not None else base
        where, asked = None, False
        if session is not None:
            served, where = self.served(session, replicas)
            if served:
                return Choice(session)
            asked = True                     # served() asked the leaders already: not twice
            if replicas.in_use(key):
                key = self.next_key(base)
                log.info("session %s reads from %s, which holds no replica now: new instances get "
                         "session %s", session.key, session.node, key)
            else:
                log.info("session %s reads from %s, which holds no replica now: re-attaching",
                         key, session.node)
                self.stop(key)
        if not asked:
            where = replicas.locate(image)
        if not _holders(where, sha256):
            return Choice(wait="no-replica")
        try:
            return Choice(self.attach(image, sha256, fmt, where.replicas, key=key), attached=True)
        except SessionError as exc:
            return Choice(wait="attach-failed", error=str(exc))

    def heal(self, key: str, replicas: Replicas) -> Healing:
        """Make session ``key`` read from another replica if its storage node
        serves the image no more or its daemon died (another node first, its
        own last: when only its daemon died). Caller holds
        ``lock(base_of(key))``."""
        was = self.record(key)
        if was is None or not replicas.in_use(key):
            return Healing("unused", was=was)
        live = self.get(key)
        where, asked = None, False
        if live is not None:
            served, where = self.served(was, replicas)
            if served:
                return Healing("served", live, was)
            asked = True                     # served() asked the leaders already: not twice
        holders = _holders(where if asked else replicas.locate(was.image), was.sha256)
        if not holders:
            return Healing("no-replica", was=was)
        t0 = time.monotonic()
        try:
            now_on = self.repoint(key, sorted(holders, key=lambda r: r.get("node") == was.node))
        except SessionError as exc:
            return Healing("failed", was=was, error=str(exc))
        return Healing("repointed", now_on, was, ms=(time.monotonic() - t0) * 1000)

    def stop(self, key: str) -> None:
        """Stop the daemon and remove the session's folder. Caller holds ``lock(base_of(key))``."""
        session = self.get(key)
        if session is not None:
            stop_session_daemon(session.pid)
            log.info("session %s stopped (pid %d)", key, session.pid)
        self._clear(key)

    def _clear(self, key: str) -> None:
        for pid in daemons_under(self.dir(key)):      # a daemon whose pid file is lost
            stop_session_daemon(pid)
        shutil.rmtree(self.dir(key), ignore_errors=True)
        short_link(self.dir(key)).unlink(missing_ok=True)

    def orphans(self) -> dict[int, str]:
        """pid -> session key of daemons under our root that no session folder
        accounts for (the key read from the daemon's socket path)."""
        known = {s.pid for s in self.list().values() if s is not None}
        return {pid: session_dir_of(cmdline).name for pid, cmdline in daemons_under(self.root).items()
                if pid not in known}

    def sweep_links(self) -> list[str]:
        """Short links (RUN_DIR) whose session folder is gone, any agent's: removed."""
        return remove_dangling_links()

    def kill_orphans(self) -> list[tuple[int, str]]:
        """Kill the orphan daemons, each under its session's lock: a daemon
        being attached right now has no session.json yet and looks like an
        orphan until the attach (which holds the lock) ends. Returns (pid, key)
        of those killed."""
        killed = []
        for pid, key in self.orphans().items():
            lock = self.lock(base_of(key))
            if not lock.acquire(blocking=False):
                continue                     # being attached: not an orphan
            try:
                if pid in self.orphans():    # still one, now that no attach runs
                    stop_session_daemon(pid)
                    killed.append((pid, key))
            finally:
                lock.release()
        return killed


class FakeSessionManager(SessionManager):
    """For the fake hypervisor (scale tests): the same life-cycle in memory,
    no daemon; the backing URL names the iSCSI LUN directly."""

    def __init__(self, root):
        super().__init__(root)
        self._fake: dict[str, Session] = {}

    def sweep_links(self) -> list[str]:
        return []                       # it makes none

    def get(self, key):
        return self._fake.get(key)

    def list(self):
        return dict(self._fake)

    def key_of_overlay(self, path):
        try:
            text = Path(path).read_text()
        except OSError:
            return None
        _, found, rest = text.partition("socket=fake-")
        return rest.split()[0] if found and rest.split() else None

    def attach(self, image, sha256, fmt, replicas, key=None):
        key = key or session_key(image, sha256)
        if key not in self._fake:
            r = next((r for r in replicas if r.get("portal") and r.get("target")), None)
            if r is None:
                raise SessionError(f"no replica of '{image}' names an iSCSI target")
            self._fake[key] = Session(key=key, image=image, sha256=sha256, format=fmt, node=r["node"],
                                      portal=r["portal"], target=r["target"], socket=f"fake-{key}")
        return self._fake[key]

    def record(self, key):
        return self._fake.get(key)

    def repoint(self, key, replicas):
        was = self._fake.pop(key, None)
        if was is None:
            raise SessionError(f"session {key} has no record to re-make it from")
        return self.attach(was.image, was.sha256, was.format, replicas, key=key)

    def stop(self, key):
        self._fake.pop(key, None)

    def orphans(self):
        return {}

    def kill_orphans(self):
        return []
