"""Dead-node takeover: exactly one survivor stops each meeting of a node that died, in time, and
the meeting can be started again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

from control_api.cluster import Claims, NodeRegistry, Roster, SocketDirectory, TakeoverWatcher

from .conftest import eventually

QUICK = {"refresh_seconds": 0.1, "dead_after_seconds": 0.5}
INTERVAL = 0.1


class Node:
    """One simulated node: its own Redis connections, registry, claims, roster, sockets, watcher."""

    def __init__(self, link, node_id: str, log: list, *, fail_first: bool = False, **timing) -> None:  # noqa: ANN001
        timing = dict(timing or QUICK)
        interval = timing.pop("interval_seconds", INTERVAL)
        dead_after = timing["dead_after_seconds"]
        self.node_id = node_id
        self.registry = NodeRegistry(link, node_id, f"http://{node_id}", **timing)
        self.claims = Claims(link, dead_after_seconds=dead_after)
        self.roster = Roster(link)
        self.sockets = SocketDirectory(link, dead_after_seconds=dead_after)
        self.log = log
        self.fail_first = fail_first
        self.watcher = TakeoverWatcher(
            self.registry, self.claims, self.roster, self.sockets, self.on_takeover, self.on_sockets_lost,
            interval_seconds=interval,
        )

    async def on_takeover(self, meeting_id: str, roster: dict[str, str]) -> None:
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("the store is down")
        self.log.append(("takeover", self.node_id, meeting_id, roster, time.monotonic()))

    async def on_sockets_lost(self, node_id: str, sockets: list) -> None:
        self.log.append(("sockets", self.node_id, node_id, sorted(s.queue_id for s in sockets)))

    async def start(self) -> None:
        await self.registry.start()
        await self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        await self.registry.stop()


async def test_one_survivor_of_two_stops_each_meeting_of_a_dead_node_then_it_can_start_again(links) -> None:
    log: list = []
    a, b, c = (Node(links(), n, log) for n in "abc")
    for node in (a, b, c):
        await node.start()
    try:
        meetings = [f"m{i}" for i in range(10)]
        for m in meetings:
            assert await a.claims.claim(m, "a") == "a"
            await a.roster.add(m, "alice", f"qa-{m}")
            await a.roster.add(m, "bob", f"qb-{m}")
        await b.claims.claim("on-b", "b")
        await a.sockets.add("qa", "alice", "a")
        await a.sockets.add("qa2", "alice", "a")
        await b.sockets.add("qb", "bob", "b")
        await asyncio.sleep(3 * INTERVAL)
        assert log == []  # a live node keeps its meetings

        # kill -9 of a: its tasks end without a word to Redis.
        await a.watcher.stop()
        await a.registry.stop(leave=False)
        died = time.monotonic()

        await eventually(lambda: len([e for e in log if e[0] == "takeover"]) == len(meetings), 5)
        taken = [e for e in log if e[0] == "takeover"]
        assert sorted(e[2] for e in taken) == meetings  # each exactly once, over both survivors
        assert {e[1] for e in taken} <= {"b", "c"}
        for e in taken:
            assert e[3] == {"alice": f"qa-{e[2]}", "bob": f"qb-{e[2]}"}
            assert e[4] - died < QUICK["dead_after_seconds"] + 3 * INTERVAL + 1.0
        # Released once each stop returned (just after the callback): free to start again.
        await eventually(lambda: _all_free(b, meetings), 2)
        assert await b.claims.owner("on-b") == "b"  # a live node's meeting is untouched

        await eventually(lambda: _forgotten(b, "a"), 3)
        assert [e for e in log if e[0] == "sockets"] in (
            [("sockets", "b", "a", ["qa", "qa2"])], [("sockets", "c", "a", ["qa", "qa2"])],
        )
        assert await c.sockets.lookup("qa") is None and await c.sockets.lookup("qb") is not None
        # The meeting can be started again, on a live node.
        assert await c.claims.claim("m0", (await c.registry.least_loaded()).node_id) in ("b", "c")
    finally:
        for node in (b, c):
            await node.stop()


async def _all_free(node: Node, meetings: list[str]) -> bool:
    for m in meetings:
        if await node.claims.owner(m) is not None or await node.roster.get(m) != {}:
            return False
    return True


async def _forgotten(node: Node, dead: str) -> bool:
    return dead not in await node.registry.dead() and await node.registry.get(dead) is None


async def test_a_failed_stop_is_tried_again(links) -> None:
    log: list = []
    a, b = Node(links(), "a", log), Node(links(), "b", log, fail_first=True)
    await a.start()
    await b.start()
    try:
        await a.claims.claim("m", "a")
        await a.roster.add("m", "alice", "q")
        await a.watcher.stop()
        await a.registry.stop(leave=False)
        await eventually(lambda: any(e[0] == "takeover" for e in log), 5)
        assert [e[1:4] for e in log if e[0] == "takeover"] == [("b", "m", {"alice": "q"})]
        assert b.fail_first is False
        await eventually(lambda: _all_free(b, ["m"]), 2)
    finally:
        await b.stop()


async def test_a_node_that_stops_cleanly_with_meetings_has_them_taken_over_at_once(links) -> None:
    log: list = []
    a, b = Node(links(), "a", log), Node(links(), "b", log)
    await a.start()
    await b.start()
    try:
        await a.claims.claim("m", "a")
        await a.watcher.stop()
        await a.registry.stop()  # leaves, but holds a claim: marked dead now, not in 0.5 s
        took = await eventually(lambda: any(e[0] == "takeover" for e in log), 5)
        assert took < QUICK["dead_after_seconds"]
    finally:
        await b.stop()


NODE_SCRIPT = """
import asyncio, sys
from control_api.cluster import Claims, NodeRegistry, RedisLink

async def main():
    link = RedisLink(sys.argv[1], prefix=sys.argv[2])
    registry = NodeRegistry(link, "doomed", "http://doomed")  # the real intervals: 2 s, 10 s
    await registry.start()
    await Claims(link).claim("meeting", "doomed")
    print("claimed", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_at_the_real_intervals_a_node_killed_with_sigkill_is_taken_over_within_20_s(
    links, redis_server, prefix
) -> None:
    """A real process, SIGKILL, two survivors at the defaults (refresh 2 s, dead after 10 s)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(NODE_SCRIPT), redis_server.url, prefix],
        stdout=subprocess.PIPE, text=True,
    )
    log: list = []
    timing = {"refresh_seconds": 2.0, "dead_after_seconds": 10.0, "interval_seconds": 2.0}
    survivors = [Node(links(), n, log, **timing) for n in ("b", "c")]
    try:
        assert await asyncio.to_thread(proc.stdout.readline) == "claimed\n"
        for node in survivors:
            await node.start()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        killed = time.monotonic()
        await eventually(lambda: any(e[0] == "takeover" for e in log), 20)
        taken = [e for e in log if e[0] == "takeover"]
        assert [e[2] for e in taken] == ["meeting"] and taken[0][4] - killed < 20
        await asyncio.sleep(2.5)  # one more round of both watchers: nobody takes it twice
        assert len([e for e in log if e[0] == "takeover"]) == 1
        assert await _all_free(survivors[0], ["meeting"])
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for node in survivors:
            await node.stop()


async def test_a_node_taken_for_dead_that_lives_drops_the_meetings_it_no_longer_owns(links) -> None:
    log: list = []
    lost: list[str] = []
    running = {"m1", "m2"}

    async def on_claim_lost(meeting_id: str) -> None:
        lost.append(meeting_id)
        running.discard(meeting_id)

    a, b = Node(links(), "a", log), Node(links(), "b", log)
    a.watcher = TakeoverWatcher(
        a.registry, a.claims, a.roster, a.sockets, a.on_takeover,
        local_meetings=lambda: running, on_claim_lost=on_claim_lost, interval_seconds=INTERVAL,
    )
    await a.start()
    await b.start()
    try:
        for m in sorted(running):
            await a.claims.claim(m, "a")
        await asyncio.sleep(3 * INTERVAL)
        assert lost == []  # owned: kept
        await a.registry.stop(leave=False)  # a's heartbeat stops (cut from Redis), its watcher not
        await eventually(lambda: lost == ["m1", "m2"], 5)
        assert sorted(e[2] for e in log if e[0] == "takeover") == ["m1", "m2"]
        assert running == set()
    finally:
        await a.watcher.stop()
        await b.stop()
