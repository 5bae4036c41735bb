"""Meeting -> node claims: atomic under concurrent starts, released by their holder only, taken
over from a dead node by exactly one survivor."""

from __future__ import annotations

import asyncio

from control_api.cluster import Claims, NodeRegistry, Roster

NODES = 5
ROUNDS = 200


async def test_concurrent_claims_of_one_meeting_have_exactly_one_owner_every_time(links) -> None:
    """NODES clients, each on connections of its own, claim the same meeting at once, ROUNDS times."""
    node_links = [links() for _ in range(NODES)]
    claims = [Claims(link) for link in node_links]
    for link in node_links:  # connected beforehand, so that every claim leaves at the same instant
        await link.client.ping()
    for round_ in range(ROUNDS):
        meeting = f"m{round_}"
        answers = await asyncio.gather(*(c.claim(meeting, f"n{i}") for i, c in enumerate(claims)))
        owner = await claims[0].owner(meeting)
        winners = [f"n{i}" for i, a in enumerate(answers) if a == f"n{i}"]
        assert winners == [owner], (round_, answers)
        assert set(answers) == {owner}  # the losers learn who owns it
    owned = [await claims[0].of_node(f"n{i}") for i in range(NODES)]
    assert sum(len(o) for o in owned) == ROUNDS
    assert set().union(*owned) == {f"m{r}" for r in range(ROUNDS)}

    # The same race with a check-then-set (GET, then SET) does give two owners: the test sees races.
    async def naive(link, meeting: str, node: str) -> bool:  # noqa: ANN001
        if await link.client.get(link.keys.claim(meeting)) is None:
            await link.client.set(link.keys.claim(meeting), node)
            return True
        return False

    doubled = 0
    for round_ in range(20):
        won = await asyncio.gather(*(naive(link, f"naive{round_}", f"n{i}") for i, link in enumerate(node_links)))
        doubled += sum(won) > 1
    assert doubled > 0


async def test_release_only_by_the_holder_then_claimable_again(links) -> None:
    claims = Claims(links())
    assert await claims.claim("m", "a") == "a"
    assert await claims.claim("m", "b") == "a"
    assert await claims.release("m", "b") is False  # not b's to release
    assert await claims.owner("m") == "a"
    assert await claims.release("m", "a") is True
    assert await claims.owner("m") is None and await claims.of_node("a") == set()
    assert await claims.claim("m", "b") == "b"
    assert await claims.of_node("b") == {"m"}


async def test_take_over_only_from_a_dead_holder_and_only_once(links) -> None:
    link = links()
    claims = Claims(link, dead_after_seconds=0.3)
    dead = NodeRegistry(link, "dead", "http://dead", dead_after_seconds=0.3)
    live = NodeRegistry(link, "live", "http://live", dead_after_seconds=0.3)
    await dead.refresh()
    await live.refresh()
    await claims.claim("m", "dead")
    assert await claims.take_over("m", "dead", "x") is False  # its holder is alive
    await asyncio.sleep(0.35)
    await live.refresh()
    assert await claims.take_over("m", "live", "x") is False  # not live's claim
    results = await asyncio.gather(*(Claims(links(), dead_after_seconds=0.3).take_over("m", "dead", n) for n in "xyz"))
    assert sorted(results) == [False, False, True]
    winner = "xyz"[results.index(True)]
    assert await claims.owner("m") == winner
    assert await claims.of_node("dead") == set() and await claims.of_node(winner) == {"m"}
    assert await claims.hand_back("m", winner, "dead") is True
    assert await claims.owner("m") == "dead" and await claims.of_node("dead") == {"m"}


async def test_roster_of_a_meeting(links) -> None:
    roster = Roster(links())
    await roster.add("m", "alice", "q1")
    await roster.add("m", "bob", "q2")
    await roster.add("m", "alice", "q3")  # a second join of alice: her new socket
    await roster.add("other", "carol", "q4")
    assert await roster.get("m") == {"alice": "q3", "bob": "q2"}
    await roster.remove("m", "bob")
    assert await roster.get("m") == {"alice": "q3"}
    await roster.clear("m")
    assert await roster.get("m") == {} and await roster.get("other") == {"carol": "q4"}
