"""A compute agent's offer basis kept between offers (agents/handshake.py
``KeptBasis``) against a real ZooKeeper and a real TreeCache: read once while
the cache shows the same folder, read again when a placement, a
termination or a removal shows in it -- and never an over-commit, because
what an offer counts is one read of ZooKeeper's, whose version the commit
checks."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from kazoo.exceptions import BadVersionError, ConnectionLoss
from kazoo.recipe.cache import TreeCache

from cowfleet.agents.handshake import KeptBasis, offer_from
from cowfleet.models import Flavor, NodeInfo
from cowfleet.protocol import DESIRED_RUN, DESIRED_TERMINATE, assignment_data
from cowfleet.zk import layout
from tests.conftest import chrooted
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

SMALL = Flavor(name="small", vcpus=1, memory_mib=512, disk_gib=1)
NODE = NodeInfo(name="n1", role="compute", rack="r1", address="", capacity={"vcpus": 4, "memory_mib": 4096})


def place(own_zk, version: int, *ids: str) -> int:
    """A placement's unit on n1: the folder set with the version offered, the assignments made."""
    folder = layout.assignments("n1")
    tx = own_zk.transaction()
    tx.set_data(folder, b"", version=version)
    for iid in ids:
        tx.create(layout.assignment("n1", "g", iid), assignment_data(DESIRED_RUN, SMALL))
    results = tx.commit()
    if isinstance(results[0], Exception):
        raise results[0]
    return own_zk.exists(folder).version


def test_read_again_only_when_the_cache_shows_a_change(own_zk):
    folder = layout.assignments("n1")
    own_zk.ensure_path(folder)
    version = place(own_zk, 0, "a", "b")
    cache = TreeCache(own_zk, folder)
    cache.start()
    try:
        wait_until(lambda: len(cache.get_children(folder) or []) == 2
                   and cache.get_data(layout.assignment("n1", "g", "b")) is not None, 10, "cache filled")
        kept = KeptBasis(own_zk, "n1", cache)
        first = kept.current()
        assert (first.version, sorted(first.assignments)) == (version, ["g:a", "g:b"])
        assert offer_from(first, NODE, "g", SMALL, 10).count == 2          # 4 vCPUs, 2 used
        for _ in range(5):
            assert kept.current() is first
        assert kept.reads == 1

        def shows(pred):
            wait_until(lambda: pred(kept.current()), 10, "the change in the basis")
        version = place(own_zk, version, "c")                                  # a placement
        shows(lambda b: b.version == version and "g:c" in b.assignments)
        assert offer_from(kept.current(), NODE, "g", SMALL, 10).count == 1
        own_zk.set(layout.assignment("n1", "g", "a"), assignment_data(DESIRED_TERMINATE, SMALL))   # a termination
        shows(lambda b: offer_from(b, NODE, "g", SMALL, 10).count == 2)
        own_zk.delete(layout.assignment("n1", "g", "a"))                        # its removal
        shows(lambda b: "g:a" not in b.assignments)
        settled = kept.reads
        assert [kept.current() for _ in range(3)] and kept.reads == settled
    finally:
        cache.close()


def test_a_lagging_cache_cannot_over_commit(own_zk):
    """The cache stopped (it shows n1 as it was); another coordinator places
    on n1 meanwhile. An offer made from the kept basis counted the old folder
    -- and cannot commit: its version is ZooKeeper's no longer."""
    folder = layout.assignments("n1")
    own_zk.ensure_path(folder)
    version = place(own_zk, 0, "a")
    cache = TreeCache(own_zk, folder)
    cache.start()
    wait_until(lambda: cache.get_data(layout.assignment("n1", "g", "a")) is not None, 10, "cache filled")
    kept = KeptBasis(own_zk, "n1", cache)
    offer = offer_from(kept.current(), NODE, "g", SMALL, 10)
    assert offer.count == 3
    cache.close()                           # from now on it shows nothing new
    place(own_zk, version, "b", "c", "d")       # another coordinator's placement: n1 full, 4 of 4 vCPUs
    with pytest.raises(BadVersionError):
        place(own_zk, offer.version, "x", "y", "z")


def test_a_cached_terminate_is_read_again(own_zk):
    """The cache's data of an assignment is taken only if it says run: a
    cached terminate may be an earlier assignment of the same name (ids are
    random; a freed one can come again), which would count it free."""
    folder = layout.assignments("n1")
    own_zk.ensure_path(folder)
    place(own_zk, 0, "a")
    old = {f"{folder}/g:a": assignment_data(DESIRED_TERMINATE, SMALL)}
    stale = SimpleNamespace(get_data=lambda path: SimpleNamespace(data=old[path]) if path in old else None,
                            get_children=lambda path: ["g:a"])
    basis = KeptBasis(own_zk, "n1", stale).current()
    assert offer_from(basis, NODE, "g", SMALL, 10).count == 3                  # ZooKeeper's run, counted


def test_no_offer_while_cut_off_from_zookeeper(own_zk, zk_hosts, request):
    """An agent whose ZooKeeper connection is gone offers nothing, even with
    a basis kept: its session may be expiring, its instances with it."""
    folder = layout.assignments("n1")
    own_zk.ensure_path(folder)
    place(own_zk, 0, "a")
    with chrooted(zk_hosts, request.node.name) as agent_zk:
        cache = TreeCache(agent_zk, folder)
        cache.start()
        wait_until(lambda: cache.get_data(layout.assignment("n1", "g", "a")) is not None, 10, "cache filled")
        kept = KeptBasis(agent_zk, "n1", cache)
        assert offer_from(kept.current(), NODE, "g", SMALL, 10).count == 3
        agent_zk.stop()                       # the connection gone (LOST)
        with pytest.raises(ConnectionLoss):
            kept.current()
        assert kept.reads == 1


def test_a_retry_reads_anew_whatever_the_cache_shows(own_zk):
    """A coordinator that lost its commit to a version guard asks again
    with ``fresh``: a cache still behind the placement that won would
    otherwise give the same stale offer to each of its retries."""
    folder = layout.assignments("n1")
    own_zk.ensure_path(folder)
    version = place(own_zk, 0, "a")
    a = layout.assignment("n1", "g", "a")
    frozen = {folder: SimpleNamespace(stat=SimpleNamespace(version=version), data=b""),
              a: SimpleNamespace(data=own_zk.get(a)[0])}
    lagging = SimpleNamespace(get_data=frozen.get, get_children=lambda path: [a.rsplit("/", 1)[1]])
    kept = KeptBasis(own_zk, "n1", lagging)
    stale = kept.current()
    won = place(own_zk, version, "b", "c", "d")          # another coordinator's placement: n1 full
    assert kept.current() is stale and kept.reads == 1   # the cache shows nothing new
    retry = offer_from(kept.current(fresh=True), NODE, "g", SMALL, 10)
    assert (retry.version, retry.count, kept.reads) == (won, 0, 2)
