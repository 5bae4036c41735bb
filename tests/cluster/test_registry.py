"""Node registry: entries refreshed in the background, dead when too old, least loaded chosen."""

from __future__ import annotations

import asyncio

import pytest

from control_api.cluster import Claims, NodeLoad, NodeRegistry

from .conftest import eventually


async def test_live_nodes_with_address_and_load_and_the_least_loaded(links) -> None:
    loads = {
        "a": NodeLoad(meetings=2, participants=5, peer_connections=9),
        "b": NodeLoad(meetings=1, participants=2, peer_connections=3),
        "c": NodeLoad(meetings=5, participants=9, peer_connections=3),
    }
    nodes = [
        NodeRegistry(links(), n, f"http://10.0.0.{i}:10000", lambda n=n: loads[n], refresh_seconds=0.05)
        for i, n in enumerate(loads)
    ]
    try:
        for node in nodes:
            await node.start()
        live = await nodes[0].live()
        assert [(e.node_id, e.address, e.load) for e in live] == [
            ("a", "http://10.0.0.0:10000", loads["a"]),
            ("b", "http://10.0.0.1:10000", loads["b"]),
            ("c", "http://10.0.0.2:10000", loads["c"]),
        ]
        # Fewest peer connections first; between b and c (3 each), fewer participants.
        assert (await nodes[2].least_loaded()).node_id == "b"
        loads["b"] = NodeLoad(meetings=0, participants=0, peer_connections=50)  # carried by the next refresh
        await eventually(lambda: _least(nodes[0], "c"), 2)
        assert (await nodes[1].get("b")).load == loads["b"]
        assert await nodes[1].get("nope") is None
    finally:
        for node in nodes:
            await node.stop()
    assert await nodes[0].live() == []  # a clean stop without claims removes the entry


async def _least(registry: NodeRegistry, node_id: str) -> bool:
    return (await registry.least_loaded()).node_id == node_id


async def test_an_entry_not_refreshed_is_dead_after_the_interval_and_not_chosen(links) -> None:
    quick = {"refresh_seconds": 0.05, "dead_after_seconds": 0.4}
    a = NodeRegistry(links(), "a", "http://a", lambda: NodeLoad(), **quick)
    b = NodeRegistry(links(), "b", "http://b", lambda: NodeLoad(9, 9, 9), **quick)
    await a.start()
    await b.start()
    try:
        assert [e.node_id for e in await b.live()] == ["a", "b"]
        assert await b.dead() == []
        await a.stop(leave=False)  # as a kill: the entry stays, unrefreshed
        await asyncio.sleep(0.2)
        assert [e.node_id for e in await b.live()] == ["a", "b"]  # not yet 0.4 s old
        await eventually(lambda: _dead(b, ["a"]), 2)
        assert [e.node_id for e in await b.live()] == ["b"]
        assert (await b.least_loaded()).node_id == "b"  # a less loaded but dead node is never chosen
        assert await b.forget("a") is True  # no claims: forgotten
        assert await b.dead() == []
    finally:
        await b.stop()


async def _dead(registry: NodeRegistry, expected: list[str]) -> bool:
    return await registry.dead() == expected


def test_a_node_id_is_checked(links) -> None:
    with pytest.raises(ValueError, match="node id"):
        NodeRegistry(links(), "has space", "http://a")


async def test_a_burst_of_starts_spreads_over_nodes_with_equal_reported_loads(links) -> None:
    # Two idle nodes, refreshed rarely: starts in a row between two refreshes see the same
    # reported loads; the claims each one holds already tell them apart.
    a = NodeRegistry(links(), "a", "http://a", lambda: NodeLoad(), refresh_seconds=60)
    b = NodeRegistry(links(), "b", "http://b", lambda: NodeLoad(), refresh_seconds=60)
    claims = Claims(links())
    await a.start()
    await b.start()
    try:
        placed = []
        for i in range(5):
            target = (await b.least_loaded()).node_id
            placed.append(await claims.claim(f"m{i}", target))
        assert placed == ["a", "b", "a", "b", "a"]
        await claims.release("m0", "a")
        await claims.release("m2", "a")
        assert (await b.least_loaded()).node_id == "a"  # released claims count no more (1 against 2)
    finally:
        await a.stop()
        await b.stop()
