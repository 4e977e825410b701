"""A compute agent leaves a settled instance alone (ComputeAgent.reconcile,
_adopt): an adopt reads the instance's record, and adopting every running
instance every round was 20 ZooKeeper reads a second per 100 instances
(10,000 fake instances kept a fleet of agents busy between placements,
bench/placement.py). Settled means adopted once with its domain running and
not paused; a domain that pauses, stops or goes makes it unsettled again."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from cowfleet.agents.compute import agent as agent_module
from cowfleet.agents.compute.hypervisor import DomainInfo
from cowfleet.models import Instance, InstanceState
from cowfleet.protocol import DESIRED_RUN, Assignment


def _agent(domains: dict):
    calls = []
    run = Assignment(desired=DESIRED_RUN, vcpus=1, memory_mib=256)
    me = SimpleNamespace(
        desired=lambda: {"i1": ("web", "web:i1", run)},
        instnet=None, settled=set(), calls=calls,
        hyper=SimpleNamespace(list=lambda _node: dict(domains)),
        overlays=SimpleNamespace(list=lambda: {}), seeds=SimpleNamespace(list=lambda: {}),
        _submit=lambda iid, fn, *args: calls.append((iid, fn)),
        _start="start", _adopt="adopt", _terminate="terminate",
        _reconcile_sessions=lambda overlays: None, _keep_spares=lambda desired, domains, current: None,
        _prune_templates=lambda current: None, _template_current=lambda: None, started={}, wake=threading.Event(),
        known={}, known_lock=threading.Lock(), basis=SimpleNamespace(current=lambda: None),
        zk=SimpleNamespace(connected=True))
    me.name = "n1"
    return me


def test_a_running_instance_is_adopted_until_settled_then_left_alone():
    domains = {"i1": DomainInfo(name="web-i1", instance_id="i1", group="web", running=True)}
    me = _agent(domains)
    agent_module.ComputeAgent.reconcile(me)
    assert me.calls == [("i1", "adopt")]
    me.settled.add("i1")                         # what a finished adopt of a running domain does
    me.calls.clear()
    agent_module.ComputeAgent.reconcile(me)
    agent_module.ComputeAgent.reconcile(me)
    assert me.calls == [], "a settled instance is adopted again (a ZooKeeper read each round)"


def test_a_settled_instance_whose_domain_paused_or_went_is_looked_at_again():
    domains = {"i1": DomainInfo(name="web-i1", instance_id="i1", group="web", running=True, paused=True)}
    me = _agent(domains)
    me.settled.add("i1")
    agent_module.ComputeAgent.reconcile(me)
    assert me.calls == [("i1", "adopt")]         # paused (an I/O error): the adopt asks for the failover
    me.calls.clear()
    domains.clear()
    agent_module.ComputeAgent.reconcile(me)
    assert me.calls == [("i1", "start")] and "i1" not in me.settled


def test_an_instance_started_while_the_domains_were_listed_is_not_started_again():
    # the listing began before its domain ran (a warm spare claimed in 0.1 s
    # finishes within a round): a second start would run it twice
    domains: dict = {}
    me = _agent(domains)
    listing = me.hyper.list

    def list_while_it_starts(node):
        out = listing(node)
        me.started["i1"] = time.monotonic()      # its start ends meanwhile
        return out
    me.hyper.list = list_while_it_starts
    agent_module.ComputeAgent.reconcile(me)
    assert me.calls == [] and me.wake.is_set(), "looked at again next round, not started"
    me.hyper.list = listing
    agent_module.ComputeAgent.reconcile(me)
    assert me.calls == [("i1", "start")], "a later listing without it: started (its domain went)"
    # listed paused, before its resume: not adopted (it would be destroyed as an interrupted clone)
    domains["i1"] = DomainInfo(name="web-i1", instance_id="i1", group="web", running=True, paused=True, clone=True)
    me.calls.clear()
    me.hyper.list = list_while_it_starts
    agent_module.ComputeAgent.reconcile(me)
    assert me.calls == []


def test_an_adopt_settles_a_running_domain_and_not_a_paused_one(monkeypatch):
    inst = Instance(id="i1", group="web", node="n1", rack="r1", image="tiny", flavor="small", generation=1,
                    state=InstanceState.READY)
    monkeypatch.setattr(agent_module, "read", lambda zk, path, model: (inst, 3))
    me = SimpleNamespace(zk=None, settled=set(), awaiting={}, awaiting_lock=threading.Lock(),
                         awaited=threading.Event(), log=SimpleNamespace(info=lambda *a: None),
                         _remember=lambda iid, got: None)
    running = DomainInfo(name="web-i1", instance_id="i1", group="web", running=True)
    agent_module.ComputeAgent._adopt(me, "web", "i1", running)
    assert me.settled == {"i1"} and me.awaiting == {}        # ready: nothing to wait for
    paused = DomainInfo(name="web-i1", instance_id="i1", group="web", running=True, paused=True)
    me.settled.clear()
    me.hyper = SimpleNamespace(resume=lambda name, attach=None: None)
    me.instnet = None
    agent_module.ComputeAgent._adopt(me, "web", "i1", paused)
    assert me.settled == set()
