"""Network namespaces for the racks lab: ``ip netns`` helpers, sockets opened
inside a namespace, and a TCP forwarder from the host's loopback into one.

Linux keeps the network namespace per thread: a thread that calls
``setns(2)`` creates its sockets in that namespace, and a socket keeps its
namespace for life. That lets one process listen on the host's 127.0.0.1 and
connect to an address that exists only inside a namespace, so the host's own
network is never touched (no interface, route or address is added to it).

    python -m cowfleet.lab.netns proxy 127.0.0.1:PORT NETNS ADDR:PORT
"""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import threading

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


class NetnsError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; returns stdout."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def names(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def pids(name: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", name, check=False).split()]


def enter(name: str) -> None:
    """Move the calling thread into namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def connect(name: str, host: str, port: int, timeout: float = 2.0) -> socket.socket:
    """A TCP connection made from inside namespace ``name`` (the caller's
    thread stays where it is)."""
    result: dict = {}

    def run():
        try:
            enter(name)
            result["sock"] = socket.create_connection((host, port), timeout=timeout)
        except BaseException as exc:      # handed to the caller
            result["error"] = exc

    t = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
    t.start()
    t.join(timeout + 5)
    if "sock" in result:
        return result["sock"]
    raise result.get("error") or NetnsError(f"connect in {name} timed out")


def ask(name: str, host: str, port: int, data: bytes, timeout: float = 2.0) -> bytes:
    """Send ``data`` from inside ``name`` and read the answer until EOF (ZooKeeper's four-letter words)."""
    with connect(name, host, port, timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


# -- the forwarder ---------------------------------------------------------------

def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve(conn: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        conn.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
    back.start()
    _pump(conn, upstream)
    back.join()
    conn.close()
    upstream.close()


def proxy(listen: tuple[str, int], name: str, target: tuple[str, int]) -> None:
    """Accept on ``listen`` (in this namespace) and forward each connection to
    ``target`` inside namespace ``name``. Runs until killed."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(listen)
    srv.listen(128)
    enter(name)            # the listening socket stays where it was made
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve, args=(conn, target), daemon=True).start()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 4 or argv[0] != "proxy":
        print("usage: python -m cowfleet.lab.netns proxy LISTEN_HOST:PORT NETNS TARGET_HOST:PORT",
              file=sys.stderr)
        return 2
    proxy(_hostport(argv[1]), argv[2], _hostport(argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
