"""The placement policy, pure (no I/O, no ZooKeeper): how many instances of
a flavor a node can take, and how a request is split over the nodes that
offered room (the strategies ``spread`` and ``pack``). The hand-shake
(handshake.py) gathers the offers; placement.py commits the split."""
from __future__ import annotations

import heapq

from cowfleet.models import Flavor
from cowfleet.protocol import NodeOffer


def offer_count(capacity: dict, used_vcpus: int, used_mib: int, reserved: tuple[int, int],
                flavor: Flavor, want: int) -> int:
    free_v = capacity.get("vcpus", 0) - used_vcpus - reserved[0]
    free_m = capacity.get("memory_mib", 0) - used_mib - reserved[1]
    fits = []
    if flavor.vcpus > 0:
        fits.append(free_v // flavor.vcpus)
    if flavor.memory_mib > 0:
        fits.append(free_m // flavor.memory_mib)
    return max(0, min([want] + fits))


def split(offers: list[NodeOffer], want: int, strategy: str, max_per_node: int | None) -> dict[str, int]:
    """How many new instances each node gets.

    spread: each next instance goes to the rack with the fewest instances of
    the group, and there to the node with the fewest: racks and nodes stay
    balanced within one (as far as capacity allows). pack: fill the busiest
    node that still has room, then the next.
    """
    room = {}
    for o in offers:
        cap = o.count
        if max_per_node is not None:
            cap = min(cap, max_per_node - o.of_group)
        if cap > 0:
            room[o.node] = cap
    by_node = {o.node: o for o in offers}
    take: dict[str, int] = {}
    if strategy == "pack":
        order = sorted(room, key=lambda n: (-by_node[n].used_memory_mib, -by_node[n].used_vcpus,
                                            -by_node[n].of_group, n))
        for n in order:
            if want <= 0:
                break
            k = min(room[n], want)
            take[n] = k
            want -= k
        return take
    # heaps keyed like the rule above: only the rack and node just picked
    # change their key, so popping them and pushing them back keeps both
    # exact. A scan of every rack and node per instance took 5.5 s for
    # 10,000 instances over 1,000 nodes; this takes ~0.05 s.
    node_count = {o.node: o.of_group for o in offers}
    rack_count: dict[str, int] = {}
    racks: dict[str, list] = {}
    for o in offers:
        rack_count[o.rack] = rack_count.get(o.rack, 0) + o.of_group
        if o.node in room:
            racks.setdefault(o.rack, []).append((node_count[o.node], -room[o.node], o.node))
    rack_room = {r: -sum(k[1] for k in nodes) for r, nodes in racks.items()}
    rack_heap = [(rack_count[r], -rack_room[r], r) for r in racks]
    heapq.heapify(rack_heap)
    for nodes in racks.values():
        heapq.heapify(nodes)
    for _ in range(want):
        if not rack_heap:
            break
        _, _, rack = heapq.heappop(rack_heap)
        _, _, node = heapq.heappop(racks[rack])
        take[node] = take.get(node, 0) + 1
        node_count[node] += 1
        rack_count[rack] += 1
        room[node] -= 1
        rack_room[rack] -= 1
        if room[node]:
            heapq.heappush(racks[rack], (node_count[node], -room[node], node))
        if racks[rack]:
            heapq.heappush(rack_heap, (rack_count[rack], -rack_room[rack], rack))
    return take
