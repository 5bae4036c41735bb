"""A node that dies (kill -9 of a real `meeting-sfu serve` process): within 20 s a survivor stops
each of its meetings as by a stop, towards the sockets on the live nodes; the meeting starts
again on a live node; a node started later with the same settings serves the same meetings."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.control_api.support import create_meeting, user
from tests.control_api.test_storage import fresh_database
from tests.helpers import new_id

from .conftest import eventually
from .nodes import NodeProcess, RemoteHandle, load_of, owner_of
from .test_nodes import via


@pytest.fixture
async def processes(tmp_path, postgres_server, redis_server, prefix):
    database_url = await fresh_database(postgres_server)
    made: list[tuple[NodeProcess, RemoteHandle]] = []

    async def make(node_id: str) -> tuple[NodeProcess, RemoteHandle]:
        node = NodeProcess(tmp_path, database_url, redis_server.url, prefix, node_id)
        node.start()
        made.append((node, RemoteHandle(node.url)))
        return made[-1]

    async def ready(*started: tuple[NodeProcess, RemoteHandle]) -> None:
        await asyncio.gather(*(asyncio.to_thread(node.wait_ready) for node, _ in started))

    make.ready = ready  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for node, handle in reversed(made):
            await handle.stop()
            await asyncio.to_thread(node.stop)


async def test_kill_9_of_the_owner_stops_its_meeting_on_the_survivor_then_it_starts_again(
    processes, redis_server, prefix
):
    (proc_a, a), (proc_b, b) = await processes("a"), await processes("b")
    await processes.ready((proc_a, a), (proc_b, b))
    room = new_id()
    olga = await user(b, {room: "owner"})  # both sockets on the survivor-to-be
    bob = await user(b, {room: "member"})
    mid = (await create_meeting(olga, room))["id"]
    status, body = await olga.call("POST", f"/meetings/{mid}/start")
    assert status == 200 and body["active"] is True, body
    assert await owner_of(redis_server.url, prefix, mid) == "a"  # both idle: the smallest id
    assert await olga.join(mid) == (200, {"status": "ACCEPTED"})
    assert await bob.join(mid) == (200, {"status": "ACCEPTED"})
    assert (await via(olga, a).call("GET", f"/meetings/{mid}"))[1]["participants"]
    # A second meeting, on b once a's load says it holds the first: Dan joins it from a socket on a.
    await eventually(lambda: load_of(redis_server.url, prefix, "a", 2), 10, 0.2)
    created = await create_meeting(olga, None)
    other = created["id"]
    assert (await olga.call("POST", f"/meetings/{other}/start"))[0] == 200
    assert await owner_of(redis_server.url, prefix, other) == "b"
    dan = await user(a, {created["roomId"]: "member"})
    assert await dan.join(other) == (200, {"status": "ACCEPTED"})
    assert await olga.join(other) == (200, {"status": "ACCEPTED"})

    proc_a.kill()
    died = time.monotonic()
    for ws in (olga.ws, bob.ws):
        await ws.wait("MEETING_STOPPED", timeout=20)
    took = time.monotonic() - died
    assert took < 20, took
    for ws in (olga.ws, bob.ws):
        tail = [
            m for m in ws.messages
            if m["type"] in ("MEETING_PARTICIPANT_LEFT", "MEETING_STOPPED") and m["meetingId"] == mid
        ]
        assert [m["type"] for m in tail] == ["MEETING_PARTICIPANT_LEFT"] * 2 + ["MEETING_STOPPED"], tail
        assert sorted(m["userId"] for m in tail[:2]) == sorted([olga.id, bob.id])
    assert await owner_of(redis_server.url, prefix, mid) is None
    # Dan's socket died with a: he left the meeting on b, which goes on.
    await olga.ws.wait("MEETING_PARTICIPANT_LEFT", lambda m: m["meetingId"] == other and m["userId"] == dan.id)
    status, body = await olga.call("GET", f"/meetings/{other}")
    assert status == 200 and [p["userId"] for p in body["participants"]] == [olga.id], body
    status, body = await olga.call("GET", f"/meetings/{mid}")
    assert status == 200 and body["active"] is False

    # Started again, on the live node.
    status, body = await olga.call("POST", f"/meetings/{mid}/start")
    assert status == 200 and body["active"] is True, body
    assert await owner_of(redis_server.url, prefix, mid) == "b"
    assert await olga.join(mid) == (200, {"status": "ACCEPTED"})

    # A node started later with the same settings serves the same meetings.
    proc_c, c = await processes("c")
    await processes.ready((proc_c, c))
    status, body = await via(olga, c).call("GET", f"/meetings/{mid}")
    assert status == 200 and [p["userId"] for p in body["participants"]] == [olga.id]
    carl = await user(c, {room: "member"})  # his socket on c, his join through c, owner b
    assert await carl.join(mid) == (200, {"status": "ACCEPTED"})
    await olga.ws.wait("MEETING_PARTICIPANT_JOINED", lambda m: m["userId"] == carl.id)
    await carl.ws.wait("MEETING_PARTICIPANT_JOINED", lambda m: m["userId"] == carl.id)
