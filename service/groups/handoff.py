"""The fast path of a deploy request (ARCHITECTURE §3 step 2): the service
reads the compute rack leaders from ZooKeeper, picks one and hands it the
request over its P2P endpoint, from a background thread so the API answers
at once. If that fails, nothing is lost: the request is queued in ZooKeeper
and a leader claims it after a grace period."""
from __future__ import annotations

import logging
import random
import threading

import requests

from cowfleet import p2p
from cowfleet.protocol import P2P
from cowfleet.zk.leaders import rack_leaders

log = logging.getLogger(__name__)


def hand_off(zk, request_path: str | None) -> None:
    if not request_path:
        return
    seq = request_path.rsplit("/", 1)[-1]
    threading.Thread(target=_deliver, args=(zk, seq), name=f"handoff-{seq}", daemon=True).start()


def _deliver(zk, seq: str) -> None:
    try:
        leaders = list(rack_leaders(zk, "compute").values())
        random.shuffle(leaders)
        s = p2p.session()
        for leader in leaders[:2]:         # a second try elsewhere, then the queue
            try:
                resp = s.post(leader.address + P2P.DEPLOY, json={"request": seq}, timeout=2)
                if resp.status_code == 202:
                    return
            except requests.RequestException as exc:
                log.info("hand-off of %s to %s failed: %s", seq, leader.name, exc)
    except Exception:
        log.exception("hand-off of %s failed; a leader will claim it from the queue", seq)
