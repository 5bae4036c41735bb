"""Several nodes serve one API (DESIGN section 9.2): real aiohttp apps on loopback over one
PostgreSQL database and one Redis (a key prefix of their own per test), each call sent to
whichever node, the events of any node reaching the sockets of every node."""

from __future__ import annotations

import asyncio
import time

import pytest

from control_api.cluster import Claims, RedisLink
from control_api.keys import DOMAIN, STORE
from control_api.meetings.clustered import ClusteredMeetingService
from tests.control_api.support import JOIN, create_meeting, is_error, of, user
from tests.control_api.test_storage import fresh_database
from tests.helpers import new_id

from .conftest import eventually
from .nodes import in_process, owner_of


@pytest.fixture
async def nodes(tmp_path, postgres_server, redis_server, prefix):
    database_url = await fresh_database(postgres_server)
    made = []

    async def make(node_id: str):
        handle = await in_process(tmp_path, database_url, redis_server.url, prefix, node_id)
        made.append(handle)
        return handle

    yield make
    for handle in reversed(made):
        await handle.stop()


def via(u, server):
    """The same user (same token and sockets) calling through another node."""
    return type(u)(server, u.id, u.token, u.sockets)


async def test_calls_about_one_meeting_are_answered_alike_by_every_node(nodes, redis_server, prefix):
    a, b = await nodes("a"), await nodes("b")
    room = new_id()
    olga = await user(a, {room: "owner"})  # her socket is on a
    bob = await user(b, {room: "member"})  # his socket is on b
    meeting = await create_meeting(via(olga, b), room)
    mid = meeting["id"]
    await olga.ws.wait("MEETING_CREATED")  # created on b, delivered by a
    await bob.ws.wait("MEETING_CREATED")

    status, started = await via(olga, b).call("POST", f"/meetings/{mid}/start")
    assert status == 200 and started["active"] is True, started
    owner = await owner_of(redis_server.url, prefix, mid)
    assert owner == "a"  # the least loaded (both idle: the smallest id); b relays to it
    await bob.ws.wait("MEETING_STARTED")
    await olga.ws.wait("MEETING_STARTED")

    # Each joins through the node that does not hold his socket.
    assert await via(olga, b).join(mid, olga.ws) == (200, {"status": "ACCEPTED"})
    assert await via(bob, a).join(mid, bob.ws) == (200, {"status": "ACCEPTED"})
    await olga.ws.wait("MEETING_PARTICIPANT_JOINED", lambda m: m["userId"] == bob.id)
    await bob.ws.wait("MEETING_PARTICIPANT_JOINED", lambda m: m["userId"] == olga.id)
    bodies = [await via(olga, n).call("GET", f"/meetings/{mid}") for n in (a, b)]
    assert bodies[0] == bodies[1] and bodies[0][0] == 200
    assert sorted(p["userId"] for p in bodies[0][1]["participants"]) == sorted([olga.id, bob.id])
    listed = [await via(bob, n).call("GET", "/meetings") for n in (a, b)]
    assert listed[0] == listed[1] and listed[0][1][0]["active"] is True

    # Refusals: the same status and body from the owner and from the other node.
    outsider = await user(a, connect=False)
    for path, body in ((f"/meetings/{mid}/queue", None), (f"/meetings/{mid}/stop", None)):
        method = "GET" if body is None and path.endswith("queue") else "POST"
        answers = [await via(outsider, n).call(method, path) for n in (a, b)]
        assert answers[0] == answers[1] and answers[0][0] == 403, answers
    again = [await via(olga, n).join(mid, olga.ws) for n in (a, b)]
    assert again[0] == again[1] and again[0][0] == 409, again
    stranger = await user(b)  # a socket of another user is no queue of Olga's
    wrong = [
        await via(olga, n).call("POST", f"/meetings/{mid}/join", JOIN, headers={"queue-id": stranger.ws.queue_id})
        for n in (a, b)
    ]
    assert wrong[0] == wrong[1] and wrong[0][0] == 400, wrong

    # Bob's socket on b closes: a leave on the meeting's node, seen by Olga on a.
    await bob.ws.close()
    await olga.ws.wait("MEETING_PARTICIPANT_LEFT", lambda m: m["userId"] == bob.id)
    status, body = await via(olga, b).call("GET", f"/meetings/{mid}")
    assert [p["userId"] for p in body["participants"]] == [olga.id]

    # The stop, through the node that does not own it: LEFT, then STOPPED; the claim goes.
    other = b if owner == "a" else a
    status, body = await via(olga, other).call("POST", f"/meetings/{mid}/stop")
    assert status == 200 and body["active"] is False, body
    await olga.ws.wait("MEETING_STOPPED")
    types = [t for t in of_types(olga.ws) if t in ("MEETING_PARTICIPANT_LEFT", "MEETING_STOPPED")]
    assert types[-2:] == ["MEETING_PARTICIPANT_LEFT", "MEETING_STOPPED"]
    assert await owner_of(redis_server.url, prefix, mid) is None
    status, body = await via(olga, other).call("POST", f"/meetings/{mid}/start")
    assert status == 200 and body["active"] is True


def of_types(ws):
    return [m["type"] for m in ws.messages]


async def test_the_waiting_room_across_nodes(nodes):
    a, b = await nodes("a"), await nodes("b")
    room = new_id()
    olga = await user(a, {room: "owner"})
    guest = await user(b)  # no grant: he waits
    mid = (await create_meeting(olga, room, "scheduled"))["id"]
    assert (await via(olga, b).call("POST", f"/meetings/{mid}/start"))[0] == 200
    assert await via(olga, a).join(mid, olga.ws) == (200, {"status": "ACCEPTED"})
    assert await via(guest, a).join(mid, guest.ws) == (200, {"status": "WAITING"})
    joined = await olga.ws.wait("MEETING_WAITING_PARTICIPANT_JOINED")
    assert joined["userId"] == guest.id
    for n in (a, b):
        assert await via(olga, n).call("GET", f"/meetings/{mid}/queue") == (200, {"users": [guest.id]})
    status, _ = await via(olga, b).call("POST", f"/meetings/{mid}/queue/{guest.id}", {"status": "ACCEPTED"})
    assert status == 204
    await guest.ws.wait("MEETING_WAITING_PARTICIPANT_ACCEPTED")
    await olga.ws.wait("MEETING_WAITING_PARTICIPANT_ACCEPTED")
    assert await via(guest, b).join(mid, guest.ws) == (200, {"status": "ACCEPTED"})
    await olga.ws.wait("MEETING_PARTICIPANT_JOINED", lambda m: m["userId"] == guest.id)
    assert of(guest.ws, "MEETING_PARTICIPANT_JOINED", mid)

    # A node that starts later leaves the waiting queues of the live meetings alone.
    late = await user(b)
    assert await via(late, b).join(mid, late.ws) == (200, {"status": "WAITING"})
    c = await nodes("c")
    assert await via(olga, c).call("GET", f"/meetings/{mid}/queue") == (200, {"users": [late.id]})


async def test_a_node_that_shuts_down_stops_its_meetings_for_the_others_and_releases_them(
    nodes, redis_server, prefix
):
    a, b = await nodes("a"), await nodes("b")
    room = new_id()
    olga = await user(b, {room: "owner"})
    mid = (await create_meeting(olga, room))["id"]
    assert (await olga.call("POST", f"/meetings/{mid}/start"))[0] == 200
    assert await owner_of(redis_server.url, prefix, mid) == "a"
    assert await olga.join(mid) == (200, {"status": "ACCEPTED"})
    await a.stop()  # SIGTERM's path: the app's cleanup
    await olga.ws.wait("MEETING_STOPPED")
    assert [m["type"] for m in olga.ws.messages][-2:] == ["MEETING_PARTICIPANT_LEFT", "MEETING_STOPPED"]
    assert await owner_of(redis_server.url, prefix, mid) is None
    status, body = await olga.call("POST", f"/meetings/{mid}/start")
    assert status == 200 and body["active"] is True
    assert await owner_of(redis_server.url, prefix, mid) == "b"


async def test_a_meeting_claimed_by_a_node_that_is_gone_answers_503_at_once(nodes, redis_server, prefix):
    a = await nodes("a")
    room = new_id()
    olga = await user(a, {room: "owner"})
    mid = (await create_meeting(olga, room))["id"]
    link = RedisLink(redis_server.url, prefix=prefix)
    try:
        assert await Claims(link).claim(mid, "ghost") == "ghost"  # a node that died a moment ago
    finally:
        await link.close()
    started = time.monotonic()
    for method, path in (("GET", f"/meetings/{mid}"), ("POST", f"/meetings/{mid}/start"), ("GET", "/meetings")):
        status, body = await olga.call(method, path)
        assert status == 503 and is_error(body) and body["error"] == "cluster_unavailable", (path, body)
    assert time.monotonic() - started < 3


async def test_redis_hung_answers_503_within_seconds_then_the_cluster_comes_back(tmp_path, postgres_server, own_redis):
    database_url = await fresh_database(postgres_server)
    prefix = "hung:"
    a = await in_process(tmp_path, database_url, own_redis.url, prefix, "a")
    b = await in_process(tmp_path, database_url, own_redis.url, prefix, "b")
    try:
        room = new_id()
        olga = await user(b, {room: "owner"})
        mid = (await create_meeting(olga, room))["id"]
        assert (await olga.call("POST", f"/meetings/{mid}/start"))[0] == 200
        assert await olga.join(mid) == (200, {"status": "ACCEPTED"})
        own_redis.pause()
        try:
            for method, path in (("GET", f"/meetings/{mid}"), ("POST", f"/meetings/{mid}/leave")):
                started = time.monotonic()
                status, body = await olga.call(method, path)
                assert status == 503 and is_error(body) and body["error"] == "cluster_unavailable", body
                assert time.monotonic() - started < 5
        finally:
            own_redis.resume()

        async def back() -> bool:
            status, body = await olga.call("GET", f"/meetings/{mid}")
            return status == 200 and [p["userId"] for p in body["participants"]] == [olga.id]

        await eventually(back, 10, 0.2)
    finally:
        await b.stop()
        await a.stop()


async def test_a_node_starting_leaves_the_recordings_running_on_other_nodes_alone(nodes):
    a = await nodes("a")
    room = new_id()
    olga = await user(a, {room: "owner"})
    mid = (await create_meeting(olga, room))["id"]
    assert (await olga.call("POST", f"/meetings/{mid}/start"))[0] == 200
    assert await olga.join(mid) == (200, {"status": "ACCEPTED"})
    assert (await olga.call("POST", f"/meetings/{mid}/startRecording"))[0] == 204
    c = await nodes("c")  # a start recovers recordings cut short by a crash: its own only
    for node in (a, c):
        (rec,) = await node.app[STORE].recordings(mid)
        assert rec.status == "STARTED", rec
    status, body = await via(olga, c).call("POST", f"/meetings/{mid}/stopRecording", {"name": "r", "folderId": "f"})
    assert status == 204, body
    (rec,) = await a.app[STORE].recordings(mid)
    assert rec.status == "STOPPED", rec  # by its own node (no stream was published: no file)


async def test_a_claim_of_a_live_node_that_does_not_run_the_meeting_is_swept(nodes, redis_server, prefix, monkeypatch):
    monkeypatch.setattr(ClusteredMeetingService, "sweep_seconds", 0.2)
    a = await nodes("a")
    room = new_id()
    olga = await user(a, {room: "owner"})
    mid = (await create_meeting(olga, room))["id"]
    link = RedisLink(redis_server.url, prefix=prefix)
    try:
        assert await Claims(link).claim(mid, "a") == "a"  # a start whose relay never arrived
    finally:
        await link.close()

    async def released() -> bool:
        return await owner_of(redis_server.url, prefix, mid) is None

    await eventually(released, 5)


async def test_websocket_connected_comes_first_though_room_events_come_while_the_socket_registers(
    nodes, monkeypatch
):
    # In a cluster the socket is written to Redis before its queueId is given out; a room event
    # in that wait must not reach the socket ahead of websocketConnected (a Carbonio client, as
    # the bench's, reads the greeting first).
    a = await nodes("a")
    room = new_id()
    olga = await user(a, {room: "owner"})
    mid = (await create_meeting(olga, room))["id"]
    assert (await olga.call("POST", f"/meetings/{mid}/start"))[0] == 200
    sockets = a.app[DOMAIN].node.sockets
    add, entered, release = sockets.add, asyncio.Event(), asyncio.Event()

    async def held_add(*args):
        entered.set()
        await release.wait()
        return await add(*args)

    monkeypatch.setattr(sockets, "add", held_add)
    bob = await user(a, {room: "member"}, connect=False)
    opening = asyncio.create_task(a.events(bob.token))
    await asyncio.wait_for(entered.wait(), 5)
    assert await olga.join(mid) == (200, {"status": "ACCEPTED"})  # JOINED, to every room member
    await olga.ws.wait("MEETING_PARTICIPANT_JOINED")
    await asyncio.sleep(0.2)  # delivered to every open socket of the room by now
    release.set()
    socket = await asyncio.wait_for(opening, 5)
    assert socket.messages[0]["type"] == "websocketConnected", socket.messages
    monkeypatch.setattr(sockets, "add", add)
    assert await via(bob, a).join(mid, socket) == (200, {"status": "ACCEPTED"})  # the queue is known
