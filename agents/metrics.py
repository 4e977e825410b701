"""Prometheus metrics of one node agent (prometheus_client), served on its
P2P endpoint at ``GET /metrics`` (README, "Watching the agents").

Each agent has a registry of its own (not the process-wide one), so agents
that share a process (tests) never mix their figures. Two kinds of figure:

- events, recorded where they happen: a start's and a guest's latency
  (histograms by the start's data path), failures by reason, P2P calls
  served and made (latency by route);
- state, read from the agent when scraped (a collector): capacity and
  allocation, reservations held, image sessions, copies and replicas, the
  copy backlog, leadership and the ZooKeeper connection.
"""
from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from werkzeug.wrappers import Response

from cowfleet import p2p

log = logging.getLogger(__name__)

# a start's data path: "attached" when it attached the image to this host (a
# qemu-storage-daemon started: the cold path), "shared" when it used the
# host's session of the image already running (the warm path)
ATTACHED, SHARED = "attached", "shared"

# seconds; an agent's share of a start is tens of ms (overlay 20-40 ms) to a
# few s (a session attach, a TCG domain start); a guest boot 4.5 s to minutes
START_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
READY_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 900)
P2P_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3, 10)

_calls_owner = None
_owner_lock = threading.Lock()


class AgentMetrics:
    def __init__(self, agent):
        self.agent = agent
        self.registry = r = CollectorRegistry()
        self.start_seconds = Histogram(
            "cowfleet_agent_instance_start_seconds", "An instance's start on this node, from taking it up "
            "to its domain running (session, overlay, seed, domain), by data path",
            ["path"], buckets=START_BUCKETS, registry=r)
        self.ready_seconds = Histogram(
            "cowfleet_agent_instance_ready_seconds", "From an instance's domain running to the guest's "
            "readiness line on its console, by the start's data path", ["path"], buckets=READY_BUCKETS,
            registry=r)
        self.failures = Counter("cowfleet_agent_failures", "Failed steps, by reason", ["reason"], registry=r)
        self.p2p_served = Histogram("cowfleet_agent_p2p_served_seconds", "P2P requests this agent answered",
                                    ["route", "status"], buckets=P2P_BUCKETS, registry=r)
        self.p2p_calls = Histogram("cowfleet_agent_p2p_call_seconds", "P2P calls this agent made to peers",
                                   ["route", "outcome"], buckets=P2P_BUCKETS, registry=r)
        r.register(_StateCollector(agent))
        self._running: dict[str, tuple[str, float]] = {}      # instance id -> (path, when it ran)
        self._lock = threading.Lock()
        global _calls_owner
        with _owner_lock:
            # the P2P client is the process's: its calls are timed by the first
            # agent of the process (the only one, but for agents/fleet.py's
            # many-agents-in-one-process benchmark, where they count for all)
            if _calls_owner is None:
                _calls_owner = self
                p2p.observe(self._called)

    # -- events -------------------------------------------------------------------
    def started(self, iid: str, path: str, seconds: float) -> None:
        self.start_seconds.labels(path).observe(seconds)
        with self._lock:
            self._running[iid] = (path, time.monotonic())

    def ready(self, iid: str) -> None:
        with self._lock:
            got = self._running.pop(iid, None)
        if got is not None:         # adopted after a restart: its start was not timed here
            self.ready_seconds.labels(got[0]).observe(time.monotonic() - got[1])

    def gone(self, iid: str) -> None:
        with self._lock:
            self._running.pop(iid, None)

    def failure(self, reason: str) -> None:
        self.failures.labels(reason).inc()

    # route labels: the P2P server's label of the route it matched ("other"
    # for a path no route takes), the route a call named (agents/p2p_server.py,
    # cowfleet.p2p): a closed set, never a path as a caller spelled it
    def served(self, route: str, status: int, seconds: float) -> None:
        self.p2p_served.labels(route, str(status)).observe(seconds)

    def _called(self, route: str, seconds: float, outcome: str) -> None:
        self.p2p_calls.labels(route, outcome).observe(seconds)

    # -- the scrape ---------------------------------------------------------------
    def response(self) -> Response:
        return Response(generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)


class _StateCollector:
    """What the agent holds now, read at scrape time; a figure that cannot be
    read (ZooKeeper away) is left out of that scrape, never made up."""

    def __init__(self, agent):
        self.agent = agent

    def collect(self):
        a = self.agent
        info = GaugeMetricFamily("cowfleet_agent_info", "This agent: its node, role and rack",
                                 labels=["node", "role", "rack"])
        info.add_metric([a.name, a.role, a.rack], 1)
        yield info
        yield _gauge("cowfleet_agent_leader", "1 while this agent leads its rack for its role",
                     int(a.leading.is_set()))
        yield _gauge("cowfleet_agent_zookeeper_connected", "1 while the ZooKeeper session is connected",
                     int(a.connected.is_set()))
        yield _gauge("cowfleet_agent_zookeeper_sessions_lost", "ZooKeeper sessions lost since the agent started",
                     a.losses)
        for name, doc, read in (("capacity", "What this node offers, by resource", a.capacity),
                                ("allocated", "What this node's assignments use, by resource", a.allocated)):
            fam = GaugeMetricFamily(f"cowfleet_agent_{name}", doc, labels=["resource"])
            try:
                for k, v in sorted(read().items()):
                    fam.add_metric([k], v)
            except Exception as exc:
                log.debug("metrics: %s unreadable: %r", name, exc)
                continue
            yield fam
        for fam in _role_state(a):
            yield fam


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _role_state(a):
    try:
        if a.role == "compute":
            vcpus, mib = a.reservations.held_by_others("")
            yield _gauge("cowfleet_agent_reservations", "Offers held for requests not yet committed",
                         len(a.reservations))
            res = GaugeMetricFamily("cowfleet_agent_reserved", "Capacity held by offers, by resource",
                                    labels=["resource"])
            res.add_metric(["vcpus"], vcpus)
            res.add_metric(["memory_mib"], mib)
            yield res
            yield _gauge("cowfleet_agent_image_sessions", "Image sessions (qemu-storage-daemons) on this host",
                         len(a.sessions.list()))
            with a.inflight_lock:
                busy = len(a.inflight)
            yield _gauge("cowfleet_agent_instance_operations", "Starts, adoptions and terminations under way",
                         busy)
            with a.awaiting_lock:
                waiting = len(a.awaiting)
            yield _gauge("cowfleet_agent_instances_awaiting_ready", "Running instances whose guest has not "
                         "printed its readiness line yet", waiting)
        elif a.role == "storage":
            names = a.copies.names()
            yield _gauge("cowfleet_agent_copies", "Image copies on this node's disk", len(names))
            yield _gauge("cowfleet_agent_replicas", "Copies this node publishes as replicas",
                         sum(1 for n in names if a.records.publishes(n)))
            with a.fetch_lock:
                fetching = len(a.fetching)
            yield _gauge("cowfleet_agent_copies_in_progress", "Copies this node is making now", fetching)
            short = 0
            for name in a.records.image_names():
                image = a.records.image(name)
                if image is not None and len(a.records.replicas(name)) < image.min_replicas:
                    short += 1
            yield _gauge("cowfleet_agent_copy_backlog", "Images with fewer replicas than their "
                         "min_replicas, cluster-wide, as this node reads ZooKeeper", short)
    except Exception as exc:        # ZooKeeper away mid-scrape: leave the rest out
        log.debug("metrics: role state unreadable: %r", exc)
