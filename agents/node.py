"""What every node agent does, whatever its role.

- holds an EPHEMERAL membership znode (address, role, rack, capacity,
  allocation, health), refreshed by a heartbeat and re-created after the
  session is lost;
- runs for its rack's leadership with kazoo's Election and leads only while
  its session is connected;
- serves a small P2P HTTP endpoint;
- reconciles what it runs against ZooKeeper at start, on every watch event
  and periodically.

The connection listener only sets flags: kazoo calls it from its connection
thread, which must never block.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError

from cowfleet.agents.metrics import AgentMetrics
from cowfleet.agents.p2p_server import OPEN, P2PServer, json_answer
from cowfleet.config import SECRET_FILE_VAR, cluster_secret
from cowfleet.models import NodeInfo, now
from cowfleet.protocol import P2P
from cowfleet.zk import layout
from cowfleet.zk.connection import connect

HEARTBEAT_SECONDS = 5.0
SESSION_SECONDS = 6.0
RECONCILE_SECONDS = 5.0


class NodeAgent:
    role = "node"

    def __init__(self, name: str, rack: str, zk_hosts: str, state_dir: str,
                 listen: str = "127.0.0.1:0", session_seconds: float | None = None,
                 zk: KazooClient | None = None):
        self.name, self.rack = name, rack
        self.state_dir = state_dir
        os.makedirs(state_dir, exist_ok=True)
        # one logger tree: module loggers are cowfleet.agents.<module>, a node's own
        # cowfleet.agents.<role>.<node> (logging.getLogger("cowfleet.agents") sets both)
        self.log = logging.getLogger(f"cowfleet.agents.{self.role}.{name}")
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.connected = threading.Event()
        self.session_lost = threading.Event()
        self._listen = listen
        self._http = None
        self.leading = threading.Event()
        self.losses = 0                  # sessions lost so far (LOST events)
        self.address: str | None = None
        # a short session: a dead agent's membership and leadership go within seconds
        # (the module's value read now, not at definition: tests change it)
        self.owns_zk = zk is None
        if zk is None:
            self.zk = connect(zk_hosts, timeout=SESSION_SECONDS if session_seconds is None else session_seconds,
                              listener=self._on_connection_state)
        else:
            # a session shared with other agents of one process (agents/fleet.py
            # --shared-session): this agent neither starts nor ends it
            self.zk = zk
            zk.add_listener(self._on_connection_state)
        self.connected.set()
        self.metrics = AgentMetrics(self)     # GET /metrics on the P2P endpoint

    # -- connection state (never blocks) ------------------------------------
    def _on_connection_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self.connected.set()
            self.wake.set()
        else:
            self.connected.clear()
            self.leading.clear()         # SUSPENDED: stop acting as leader at once
            if state == KazooState.LOST:
                # ephemeral nodes are gone (the election's lock znode too):
                # re-register, and whoever was leading stops -- for good, by
                # the count, which the re-registration never resets
                self.losses += 1
                self.session_lost.set()
            if hasattr(self, "leader_wake"):
                self.leader_wake.set()

    # -- membership ---------------------------------------------------------
    def capacity(self) -> dict[str, int]:
        return {}

    def allocated(self) -> dict[str, int]:
        return {}

    def extra_info(self) -> dict[str, Any]:
        return {}

    def is_healthy(self) -> bool:
        """Whether this node can do its part now (a storage node whose tgtd
        does not answer cannot); published with its membership."""
        return True

    def node_info(self) -> NodeInfo:
        return NodeInfo(name=self.name, role=self.role, rack=self.rack, address=self.address,
                        capacity=self.capacity(), allocated=self.allocated(), healthy=self.is_healthy(),
                        last_seen=now(), **self.extra_info())

    def register(self) -> None:
        path = layout.node(self.name)
        data = self.node_info().to_bytes()
        for _ in range(50):
            try:
                self.zk.create(path, data, ephemeral=True)
                self.log.info("registered as %s in rack %s (%s)", self.name, self.rack, self.role)
                return
            except NodeExistsError:
                try:
                    _, stat = self.zk.get(path)
                except NoNodeError:
                    continue
                if stat.ephemeralOwner == self.zk.client_id[0]:
                    self.zk.set(path, data)
                    return
                # a previous incarnation of this agent: its session is dead or dying
                self.log.info("replacing stale membership znode of an earlier session")
                try:
                    self.zk.delete(path, version=stat.version)
                except NoNodeError:
                    pass
        raise RuntimeError(f"could not register {path}")

    def heartbeat(self) -> None:
        if self.session_lost.is_set() and self.connected.is_set():
            self.register()
            self.session_lost.clear()      # only once registered again
            return
        try:
            self.zk.set(layout.node(self.name), self.node_info().to_bytes())
        except NoNodeError:
            self.register()

    # -- leadership ---------------------------------------------------------
    def lead_once(self) -> None:
        """One round of leader work; called repeatedly while leading."""

    def _election_loop(self) -> None:
        election = self.zk.Election(layout.rack_leader(self.rack, self.role), identifier=self.name)

        def leading() -> None:
            self.log.info("leading rack %s (%s)", self.rack, self.role)
            losses = self.losses
            try:
                while not self.stopping.is_set() and self.losses == losses:
                    if not self.connected.is_set():
                        # SUSPENDED: act as no leader, but keep the candidacy. If the
                        # session survives (its ZooKeeper server died and the client
                        # moved to another member) the lock znode is still ours and
                        # leadership stays put; only LOST gives it up.
                        self.leading.clear()
                        self.connected.wait(1)
                        continue
                    self.leading.set()
                    if not self.connected.is_set() or self.losses != losses:
                        continue           # suspended or lost just now: checked again above
                    try:
                        self.lead_once()
                    except Exception:
                        self.log.exception("leader round failed")
                    self.leader_wake.wait(RECONCILE_SECONDS)
                    self.leader_wake.clear()
            finally:
                self.leading.clear()
            self.log.info("stopped leading rack %s", self.rack)

        while not self.stopping.is_set():
            # after LOST, stand again only once the membership znode is back
            if not self.connected.wait(1) or self.session_lost.is_set():
                self.stopping.wait(0.2)
                continue
            try:
                election.run(leading)
            except Exception:
                if not self.stopping.is_set():
                    self.log.exception("election failed; retrying")
                    self.stopping.wait(1)

    # -- P2P endpoint -------------------------------------------------------
    def p2p_routes(self, server: P2PServer) -> None:
        """Add this agent's routes to its P2P server; subclasses extend."""
        server.route("/healthz", lambda request: json_answer({"status": "ok", "node": self.name}), access=OPEN)
        server.route(P2P.NODE, lambda request: json_answer(self.node_info().to_bytes()))
        server.route("/metrics", lambda request: self.metrics.response(), methods=["GET"], access=OPEN)

    def _serve_p2p(self) -> None:
        secret = cluster_secret()
        if secret is None:
            self.log.warning("no cluster secret (%s): the P2P endpoint takes unsigned requests", SECRET_FILE_VAR)
        self._http = P2PServer(self.log, observe=self.metrics.served, secret=secret)
        self.p2p_routes(self._http)
        self.address = self._http.serve(self._listen)

    # -- main loop ----------------------------------------------------------
    def reconcile(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Set up before the loop: watches, pools. Subclasses extend."""

    def run(self) -> None:
        self.leader_wake = threading.Event()
        self._serve_p2p()
        self.start()
        try:
            self.register()
        except KazooException as exc:
            # the connection dropped while starting (a ZooKeeper member dying,
            # or, at 1,000 fake agents on 2 cores, a starved client missing its
            # pings): registered by the loop below once connected, as after a
            # lost session. This ended the agent's thread for good before.
            self.log.warning("registering failed (%s); again once connected", type(exc).__name__)
            self.session_lost.set()
        threading.Thread(target=self._election_loop, name="election", daemon=True).start()
        last_beat = 0.0
        while not self.stopping.is_set():
            due = time.monotonic() - last_beat >= HEARTBEAT_SECONDS or self.session_lost.is_set()
            if due and self.connected.is_set():
                try:
                    self.heartbeat()
                    last_beat = time.monotonic()
                except Exception:
                    self.log.exception("heartbeat failed")
            if self.connected.is_set():
                try:
                    self.reconcile()
                except Exception:
                    self.log.exception("reconcile failed")
            self.wake.wait(min(RECONCILE_SECONDS, HEARTBEAT_SECONDS))
            self.wake.clear()
        self.shutdown()

    def shutdown(self) -> None:
        """Leave the cluster; instances keep running (a restarted agent adopts them)."""
        self.log.info("shutting down")
        if self._http:
            self._http.shutdown()
        if not self.owns_zk:
            # the session outlives this agent: its membership goes by hand
            # (its election contender stays until the session ends: a fleet
            # process stops all of its agents, then the session)
            self.zk.remove_listener(self._on_connection_state)
            try:
                stat = self.zk.exists(layout.node(self.name))
                if stat is not None and stat.ephemeralOwner == self.zk.client_id[0]:
                    self.zk.delete(layout.node(self.name), version=stat.version)
            except Exception:
                pass
            return
        try:
            self.zk.stop()
            self.zk.close()
        except Exception:
            pass

    def request_stop(self) -> None:
        """Ask the loops to end (safe from a signal handler)."""
        self.stopping.set()
        self.wake.set()
        if hasattr(self, "leader_wake"):
            self.leader_wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: self.request_stop())
        signal.signal(signal.SIGINT, lambda signum, frame: self.request_stop())


