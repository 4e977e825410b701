"""A compute node's side of the instance network: the addresses it hands
out (``AddressPool``) and the bridge and routes it keeps (``NodeNetwork``:
the Linux implementation, and a fake one for scale tests behind the same
calls, both run through the same contract tests).

The node is its instances' gateway: its bridge holds the subnet's first
address, and each instance's tap (made by libvirt) joins the bridge. Peers'
subnets are routed via the peers' node addresses. Nothing here adds NAT,
forwarding rules or a link to another interface: a bridge is reachable from
its own host and, where the operator enables forwarding, from peers.

Where the agent runs in another network namespace than libvirtd (the racks
lab: every node a namespace, libvirtd in the host's own), libvirt cannot put
a tap on the agent's bridge: the domain gets a tap NIC of a name the agent
chooses (``tap_name``), libvirt makes it in its own namespace, and the agent
moves it into its own and onto the bridge (``attach``) while the domain is
still paused; qemu's file descriptor follows the device.
"""
from __future__ import annotations

import abc
import hashlib
import heapq
import ipaddress
import json
import os
import subprocess
import threading

from cowfleet import network

# Routes this agent adds carry their own protocol number, so it can list and
# remove exactly its own and never anyone else's.
ROUTE_PROTO = "207"
# a bridge's alias: the state folder of the agent that made it, so a bridge
# whose folder is gone can be found and removed (remove_orphan_bridges)
OWNER_ALIAS = "cowfleet-agent "
LIBVIRT_DAEMONS = ("libvirtd", "virtqemud")


def libvirtd_netns() -> str:
    """libvirtd's network namespace (a /proc path): a running libvirtd's (or
    modular virtqemud's), else the init process's, where a service manager
    would start it. (Not /proc/1 first: a sandbox may deny reading it.)"""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().strip() in LIBVIRT_DAEMONS:
                        return f"/proc/{entry}/ns/net"
            except OSError:
                continue
    return "/proc/1/ns/net"


def apart_from_libvirtd() -> bool:
    """True when this process runs in another network namespace than libvirtd,
    so the taps libvirt makes appear there and not here."""
    try:
        mine, theirs = os.stat("/proc/self/ns/net"), os.stat(libvirtd_netns())
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino)


def tap_name(instance_id: str) -> str:
    """The tap of an instance whose NIC the agent attaches itself: unique per
    instance id on a host, within Linux's 15 characters."""
    return "cft-" + hashlib.sha256(instance_id.encode()).hexdigest()[:10]


class AddressesExhausted(RuntimeError):
    pass


class AddressPool:
    """The addresses of one node's subnet, handed out lowest first.

    Allocation is local (no ZooKeeper round trip): the address is written
    on the instance record, which is also where a restarted agent reads the
    allocations back from (``load``) before it hands out any new one.
    """

    def __init__(self, subnet: str):
        self.subnet = subnet
        self._net = ipaddress.ip_network(subnet)
        self._gateway = str(network.gateway(subnet))
        hosts = network.host_addresses(subnet)
        # free addresses, lowest first; one taken by ``load`` stays in the heap
        # (allocate skips owned ones): no O(n) removal per address read back
        self._free = [int(ipaddress.ip_address(a)) for a in hosts]
        heapq.heapify(self._free)
        self._by_id: dict[str, str] = {}
        self._owner: dict[str, str] = {}
        self._lock = threading.Lock()

    def load(self, instance_id: str, address: str | None) -> bool:
        """Take note of an allocation made earlier (an instance record's
        address). False when it is outside this subnet or another id has it."""
        if not address:
            return False
        with self._lock:
            if self._by_id.get(instance_id) == address:
                return True
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False
            if ip not in self._net or self._owner.get(address, instance_id) != instance_id \
                    or str(ip) == self._gateway:
                return False
            if instance_id in self._by_id:
                self._release_locked(instance_id)
            self._by_id[instance_id] = address
            self._owner[address] = instance_id
            return True

    def allocate(self, instance_id: str) -> str:
        with self._lock:
            if instance_id in self._by_id:
                return self._by_id[instance_id]
            while self._free:
                address = str(ipaddress.ip_address(heapq.heappop(self._free)))
                if address not in self._owner:
                    self._by_id[instance_id] = address
                    self._owner[address] = instance_id
                    return address
            raise AddressesExhausted(f"no free address left in {self.subnet} "
                                     f"({len(self._by_id)} in use)")

    def release(self, instance_id: str) -> str | None:
        with self._lock:
            return self._release_locked(instance_id)

    def _release_locked(self, instance_id: str) -> str | None:
        address = self._by_id.pop(instance_id, None)
        if address is not None:
            self._owner.pop(address, None)
            heapq.heappush(self._free, int(ipaddress.ip_address(address)))
        return address

    def in_use(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_id)


class NodeNetwork(abc.ABC):
    """The node's bridge and its routes to peers' instance subnets."""
    bridge: str

    @abc.abstractmethod
    def setup(self, subnet: str) -> None:
        """The bridge exists, is up and holds the subnet's gateway address
        (and no other); idempotent."""

    @abc.abstractmethod
    def bridge_addresses(self) -> list[str]:
        """The bridge's IPv4 addresses as ADDR/PREFIX ([] if it does not exist)."""

    @abc.abstractmethod
    def routes(self) -> dict[str, str]:
        """Our routes: subnet -> next hop."""

    @abc.abstractmethod
    def sync_routes(self, want: dict[str, str]) -> list[str]:
        """Make our routes exactly ``want`` (subnet -> next hop); returns the
        errors of routes that could not be added (one bad peer never stops
        the others)."""

    @abc.abstractmethod
    def attach(self, tap: str) -> None:
        """Put an instance's tap on the bridge, up; a tap still in libvirtd's
        namespace is moved into this node's first. Idempotent."""



def _in_netns(netns: str | None) -> list[str]:
    """ip's arguments that run a command in the named network namespace (none: this one)."""
    return ["-n", netns] if netns else []


def _run_ip(prefix: list[str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *prefix, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class LinuxBridgeNetwork(NodeNetwork):
    """iproute2, as the labs and provisioning scripts use it (a netlink
    library would add a dependency for the five commands this needs).
    ``netns`` runs every command in a named network namespace (tests);
    ``owner`` (the agent's state folder) is written as the bridge's alias."""

    def __init__(self, bridge: str, netns: str | None = None, owner: str | None = None):
        if not 1 <= len(bridge) <= 15:
            raise ValueError("a Linux interface name has 1 to 15 characters")
        self.bridge = bridge
        self.owner = owner
        self._netns = netns
        self._prefix = _in_netns(netns)

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run_ip(self._prefix, *args, check=check)

    def setup(self, subnet: str) -> None:
        want = f"{network.gateway(subnet)}/{ipaddress.ip_network(subnet).prefixlen}"
        if not self.exists():
            # no STP: a guest's port forwards at once (STP would hold it 30 s)
            self._ip("link", "add", self.bridge, "type", "bridge", "stp_state", "0")
        if self.owner:       # a label only: a folder too long for an alias (255 bytes) goes without
            self._ip("link", "set", "dev", self.bridge, "alias", OWNER_ALIAS + self.owner, check=False)
        for addr in self.bridge_addresses():
            if addr != want:
                self._ip("addr", "del", addr, "dev", self.bridge, check=False)
        if want not in self.bridge_addresses():
            self._ip("addr", "add", want, "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")

    def exists(self) -> bool:
        return self._ip("link", "show", "dev", self.bridge, check=False).returncode == 0

    def bridge_addresses(self) -> list[str]:
        proc = self._ip("-4", "-o", "addr", "show", "dev", self.bridge, check=False)
        if proc.returncode != 0:
            return []
        out = []
        for line in proc.stdout.splitlines():
            words = line.split()
            if "inet" in words:
                out.append(words[words.index("inet") + 1])
        return out

    def routes(self) -> dict[str, str]:
        proc = self._ip("-4", "route", "show", "proto", ROUTE_PROTO, check=False)
        out = {}
        for line in proc.stdout.splitlines():
            words = line.split()
            if words and "via" in words:
                dest = words[0] if "/" in words[0] else f"{words[0]}/32"
                out[dest] = words[words.index("via") + 1]
        return out

    def sync_routes(self, want: dict[str, str]) -> list[str]:
        have = self.routes()
        errors = []
        for dest in have.keys() - want.keys():
            self._ip("route", "del", dest, "proto", ROUTE_PROTO, check=False)
        for dest, via in want.items():
            if have.get(dest) != via:
                proc = self._ip("route", "replace", dest, "via", via, "proto", ROUTE_PROTO, check=False)
                if proc.returncode != 0:
                    errors.append(f"route {dest} via {via}: {proc.stderr.strip()}")
        return errors

    def attach(self, tap: str) -> None:
        if self._ip("link", "show", "dev", tap, check=False).returncode != 0:
            # still where libvirt made it: into this namespace (a named one, or this process's)
            where = self._netns or str(os.getpid())
            proc = subprocess.run(["nsenter", f"--net={libvirtd_netns()}", "ip", "link", "set", "dev", tap,
                                   "netns", where], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"moving tap {tap} from libvirtd's network namespace: {proc.stderr.strip()}")
        self._ip("link", "set", "dev", tap, "master", self.bridge, "up")

    def remove_bridge(self) -> bool:
        """Delete the bridge (libvirt removes its guests' taps with them)."""
        return self._ip("link", "del", self.bridge, check=False).returncode == 0


def remove_orphan_bridges(netns: str | None = None) -> list[str]:
    """Remove the bridges whose agent's state folder is gone, and say which.
    What a lab killed without ``lab down`` and then deleted leaves behind:
    nothing else names its bridge. A bridge whose folder exists is kept, as
    is every bridge without the alias (not an agent's)."""
    prefix = _in_netns(netns)
    proc = _run_ip(prefix, "-j", "link", "show", "type", "bridge", check=False)
    if proc.returncode != 0:
        return []
    removed = []
    for link in json.loads(proc.stdout or "[]"):
        alias = link.get("ifalias", "")
        if alias.startswith(OWNER_ALIAS) and _gone(alias[len(OWNER_ALIAS):]):
            if _run_ip(prefix, "link", "del", link["ifname"], check=False).returncode == 0:
                removed.append(link["ifname"])
    return removed


def _gone(folder: str) -> bool:
    """Only a folder that is not there: one we cannot look at (permissions,
    an I/O error, a file system not mounted yet) may still be in use."""
    try:
        os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


class FakeNodeNetwork(NodeNetwork):
    """The same bookkeeping in memory, for hundreds of agents on one machine."""

    def __init__(self, bridge: str):
        self.bridge = bridge
        self._addresses: list[str] = []
        self._routes: dict[str, str] = {}
        self._exists = False
        self.ports: set[str] = set()      # the taps attached

    def setup(self, subnet: str) -> None:
        self._exists = True
        self._addresses = [f"{network.gateway(subnet)}/{ipaddress.ip_network(subnet).prefixlen}"]

    def bridge_addresses(self) -> list[str]:
        return list(self._addresses) if self._exists else []

    def routes(self) -> dict[str, str]:
        return dict(self._routes)

    def sync_routes(self, want: dict[str, str]) -> list[str]:
        errors = []
        self._routes = {}
        for dest, via in want.items():
            try:
                ipaddress.ip_network(dest)
                ipaddress.ip_address(via)
            except ValueError as exc:
                errors.append(f"route {dest} via {via}: {exc}")
                continue
            self._routes[dest] = via
        return errors

    def attach(self, tap: str) -> None:
        if not self._exists:
            raise RuntimeError(f"bridge {self.bridge} does not exist")
        self.ports.add(tap)


def bridge_name(node: str) -> str:
    """A bridge name unique per node on one host (labs run several nodes on
    one machine) and within Linux's 15 characters."""
    return "cfbr-" + hashlib.sha256(node.encode()).hexdigest()[:8]

