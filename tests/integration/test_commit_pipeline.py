"""A placement's transactions sent ahead (agents/placement._Commit) against a
real ZooKeeper: after the first has committed, those that create go without
waiting for the one before, up to PIPELINE in flight, and the version guards
still chain because ZooKeeper applies one session's requests in order. A
transaction that fails stops the sending; what was in flight commits or
fails on its own guards; the last one (the request's removal) is never
sent after a failure, so the next round reads what is there and places the
rest."""
from __future__ import annotations

import pytest

from cowfleet.agents import placement
from cowfleet.agents.placement import Op, Plan, PlacementResult, _Commit
from cowfleet.models import Instance
from cowfleet.protocol import Trace
from cowfleet.zk import layout

pytestmark = pytest.mark.integration

GROUP = "web"
REQUEST = layout.request("req-0000000001")


@pytest.fixture
def zk(own_zk):
    for path in (layout.group_instances(GROUP), layout.REQUESTS):
        own_zk.ensure_path(path)
    own_zk.create(REQUEST, b"{}")
    return own_zk


def _plan(zk, nodes: int, per_node: int = 2) -> tuple[Plan, list[list[Op]]]:
    """One transaction per node: the group's check, the node's folder guard,
    its instances; the last removes the request."""
    p = Plan()
    check = Op("check", layout.group(GROUP), version=0)
    txs = []
    for n in range(1, nodes + 1):
        node = f"n{n}"
        zk.ensure_path(layout.assignments(node))
        ops = [check, Op("set", layout.assignments(node), b"", 0)]
        for k in range(per_node):
            inst = Instance(id=f"{node}-{k}", group=GROUP, node=node, rack="r1", image="tiny", flavor="small",
                            generation=1)
            p.created.append(inst)
            ops += [Op("create", layout.group_instance(GROUP, inst.id), inst.to_bytes()),
                    Op("create", layout.assignment(node, GROUP, inst.id), b"run")]
        txs.append(ops)
    txs.append([check, Op("delete", REQUEST)])
    return p, txs


def _commit(zk, p, txs):
    trace, result = Trace(request="req-0000000001", group=GROUP, coordinator="c1", want=len(p.created)), \
        PlacementResult()
    return _Commit(zk, GROUP, REQUEST, None, trace, result).run(txs, p), trace, result


def test_all_commit_in_order_with_several_in_flight(zk, monkeypatch):
    sent = []
    real = _Commit._send
    monkeypatch.setattr(_Commit, "_send", lambda self, ops, ahead, left: (
        sent.append((len(self.inflight), ahead)), real(self, ops, ahead, left)))
    nodes = placement.PIPELINE + 4
    p, txs = _plan(zk, nodes=nodes)
    done, trace, result = _commit(zk, p, txs)
    assert done is True
    assert sorted(zk.get_children(layout.group_instances(GROUP))) == sorted(i.id for i in p.created)
    assert not zk.exists(REQUEST)
    assert len(trace.chunks) == nodes + 1 and len(result.created) == 2 * nodes
    # the first alone, then up to PIPELINE in flight, the last alone again
    assert sent[0] == (0, False) and sent[-1] == (0, False)
    assert max(n for n, _ in sent) == placement.PIPELINE - 1
    assert all(ahead for _, ahead in sent[1:-1])


def test_a_transaction_that_fails_stops_the_sending_and_keeps_the_request(zk):
    p, txs = _plan(zk, nodes=placement.PIPELINE + 5)
    zk.set(layout.assignments("n3"), b"")          # another coordinator placed on n3 since the offers
    done, trace, result = _commit(zk, p, txs)
    assert done is None                            # a new round
    placed = set(zk.get_children(layout.group_instances(GROUP)))
    # when n3's failure comes back, 1 + PIPELINE transactions have been sent
    # (n2's answer let one more go): those after n3 commit on their own
    # guards, the rest is never sent; never half a node's unit
    sent = set(range(1, 2 + placement.PIPELINE + 1))
    assert {int(i.split("-")[0][1:]) for i in placed} == sent - {3}
    assert len(placed) == 2 * len(sent - {3})
    assert {i.node for i in result.created} == {"n1", "n2"}     # collected before the failure
    assert zk.exists(REQUEST), "the request goes only with the last transaction"
    assert trace.outcome.startswith("retried after BadVersionError in transaction 3 of ")
    assert trace.stale_nodes == ["n3"]             # its agent is asked to read anew next round
    assert [c["instances"] for c in trace.chunks] == [2, 2, 2]     # the ones collected before the stop


def test_a_nodes_second_unit_is_not_sent_while_its_first_is_in_flight(zk):
    """A node's second unit expects the folder's version after its first:
    sent ahead, it would commit on another coordinator's write that made
    the first fail -- instances counted from a stale offer."""
    p, txs = _plan(zk, nodes=4)
    # n2's instances in two units, in transactions 2 and 3
    second = [op for op in txs[1] if op.kind == "create"][2:]
    txs[1] = txs[1][:2] + [op for op in txs[1] if op.kind == "create"][:2]
    txs.insert(2, [txs[1][0], Op("set", layout.assignments("n2"), b"", 1)] + second)
    zk.set(layout.assignments("n2"), b"")          # another coordinator: n2's folder now at version 1
    done, trace, result = _commit(zk, p, txs)
    assert done is None
    nodes = {i.split("-")[0] for i in zk.get_children(layout.group_instances(GROUP))}
    assert "n2" not in nodes, "the second unit committed on the other coordinator's version"
    assert "n1" in nodes and zk.exists(REQUEST)
