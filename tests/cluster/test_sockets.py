"""The cluster's socket directory: a queue id opened on node A is found from node B, until it
closes or A dies."""

from __future__ import annotations

import asyncio

from control_api.cluster import NodeRegistry, SocketDirectory, SocketEntry


async def test_a_socket_on_a_is_found_from_b_until_closed(links) -> None:
    a_link, b_link = links(), links()
    a, b = NodeRegistry(a_link, "a", "http://a"), NodeRegistry(b_link, "b", "http://b")
    await a.refresh()
    await b.refresh()
    on_a, on_b = SocketDirectory(a_link), SocketDirectory(b_link)
    await on_a.add("q1", "alice", "a")
    await on_a.add("q2", "alice", "a")
    assert await on_b.lookup("q1") == SocketEntry("q1", "alice", "a")
    assert await on_b.lookup("unknown") is None
    assert [s.queue_id for s in await on_b.of_node("a")] == ["q1", "q2"]
    assert await on_a.remove("q1") is True
    assert await on_a.remove("q1") is False
    assert await on_b.lookup("q1") is None
    assert [s.queue_id for s in await on_b.of_node("a")] == ["q2"]


async def test_the_sockets_of_a_dead_node_are_not_open_and_purged(links) -> None:
    link = links()
    a = NodeRegistry(link, "a", "http://a", dead_after_seconds=0.3)
    b = NodeRegistry(link, "b", "http://b", dead_after_seconds=0.3)
    await a.refresh()
    directory = SocketDirectory(link, dead_after_seconds=0.3)
    await directory.add("qa", "alice", "a")
    await directory.add("qb", "bob", "b")
    await asyncio.sleep(0.35)
    await b.refresh()  # b lives on, a does not
    assert await directory.lookup("qa") is None
    assert await directory.lookup("qb") == SocketEntry("qb", "bob", "b")
    assert await directory.purge_node("a") == [SocketEntry("qa", "alice", "a")]
    assert await directory.of_node("a") == [] and await directory.purge_node("a") == []
    assert await directory.lookup("qb") is not None
