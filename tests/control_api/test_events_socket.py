"""The /events websocket (DESIGN section 4): hello, ping/pong, delivery per socket, close = leave,
and clashes of a participant joining from a second socket (section 5)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp

from tests.helpers import new_id

from .support import create_meeting, meeting_types, of, started_meeting, user


async def test_hello_carries_a_fresh_queue_id(server):
    u = await user(server)
    second = await u.connect()
    hello = u.ws.messages[0]
    assert hello == {"type": "websocketConnected", "queueId": u.ws.queue_id}
    assert str(uuid.UUID(hello["queueId"])) == hello["queueId"]
    assert second.queue_id != u.ws.queue_id


async def test_ping_pong_and_junk_is_ignored(server):
    u = await user(server)
    await u.ws.send({"type": "ping"})
    assert (await u.ws.wait("pong")) == {"type": "pong"}
    await u.ws.ws.send_str("not json")
    await u.ws.ws.send_bytes(b"\x00\x01")
    await u.ws.send({"type": "something"})
    await u.ws.ws.send_str("[1, 2]")
    await u.ws.send({"type": "ping"})
    await u.ws.wait("pong")
    assert not u.ws.closed
    assert u.ws.types() == ["websocketConnected", "pong", "pong"]


async def test_room_events_reach_every_socket_whose_token_grants_the_room(server):
    room = new_id()
    uid = new_id()
    granted = await server.events(server.token(uid, {room: "member"}))
    granted2 = await server.events(server.token(uid, {room: "owner"}))
    plain = await server.events(server.token(uid))  # same user, token without the grant
    owner = await user(server, {room: "owner"})
    meeting = await create_meeting(owner, room)
    for ws in (granted, granted2, owner.ws):
        assert (await ws.wait("MEETING_CREATED"))["meetingId"] == meeting["id"]
    await plain.settle()
    assert of(plain, "MEETING_CREATED") == []


async def test_stored_membership_delivers_to_every_socket_of_the_user(server):
    creator = await user(server)  # owner by stored membership only
    second = await creator.connect()
    meeting = await create_meeting(creator, None)
    for ws in (creator.ws, second):
        assert (await ws.wait("MEETING_CREATED"))["meetingId"] == meeting["id"]
    # a socket opened later, with a token that grants nothing, still belongs to a member
    third = await creator.connect()
    await creator.call("POST", f"/meetings/{meeting['id']}/start")
    for ws in (creator.ws, second, third):
        started = await ws.wait("MEETING_STARTED")
        assert started["starterUser"] == creator.id


async def test_closing_the_socket_leaves_the_meeting(server):
    room = new_id()
    olga = await user(server, {room: "owner"})
    max_ = await user(server, {room: "member"})
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    await olga.join(mid)
    await max_.join(mid)
    await max_.ws.close()
    ev = await olga.ws.wait("MEETING_PARTICIPANT_LEFT")
    assert ev["userId"] == max_.id
    status, body = await olga.call("GET", f"/meetings/{mid}")
    assert [p["userId"] for p in body["participants"]] == [olga.id] and body["active"] is True
    # the last participant's socket closing stops the meeting
    watcher = await max_.connect()
    await olga.ws.close()
    await watcher.wait("MEETING_PARTICIPANT_LEFT", lambda e: e["userId"] == olga.id)
    await watcher.wait("MEETING_STOPPED")
    status, body = await max_.call("GET", f"/meetings/{mid}")
    assert body["active"] is False and body["participants"] == []


async def test_closing_another_socket_of_the_participant_does_not_leave(server):
    room = new_id()
    olga = await user(server, {room: "owner"})
    extra = await olga.connect()
    meeting = await started_meeting(olga, room)
    await olga.join(meeting["id"])
    await extra.close()
    await olga.ws.settle()
    status, body = await olga.call("GET", f"/meetings/{meeting['id']}")
    assert [p["userId"] for p in body["participants"]] == [olga.id]
    assert of(olga.ws, "MEETING_PARTICIPANT_LEFT") == []


async def test_clash_moves_the_participant_to_the_new_socket(server):
    room = new_id()
    olga = await user(server, {room: "owner"})
    max_ = await user(server, {room: "member"})
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    await olga.join(mid)
    old = max_.ws
    new = await max_.connect()
    assert await max_.join(mid, old) == (200, {"status": "ACCEPTED"})
    await olga.ws.wait("MEETING_PARTICIPANT_JOINED", lambda e: e["userId"] == max_.id)
    assert await max_.join(mid, new) == (200, {"status": "ACCEPTED"})
    clash = await old.wait("MEETING_PARTICIPANT_CLASHED")
    assert clash["meetingId"] == mid
    await old.settle()
    assert of(new, "MEETING_PARTICIPANT_CLASHED") == []
    assert of(olga.ws, "MEETING_PARTICIPANT_CLASHED") == []
    # room members see him leave and come back
    await olga.ws.wait("MEETING_PARTICIPANT_LEFT", lambda e: e["userId"] == max_.id)
    await olga.ws.wait("MEETING_PARTICIPANT_JOINED", lambda e: e["userId"] == max_.id)
    tail = [
        (m["type"], m.get("userId"))
        for m in olga.ws.messages
        if m.get("type", "").startswith("MEETING_PARTICIPANT")
    ][-2:]
    assert tail == [("MEETING_PARTICIPANT_LEFT", max_.id), ("MEETING_PARTICIPANT_JOINED", max_.id)]
    status, body = await olga.call("GET", f"/meetings/{mid}")
    queues = {p["userId"]: p["queueId"] for p in body["participants"]}
    assert queues == {olga.id: olga.ws.queue_id, max_.id: new.queue_id}
    # the old socket closing no longer removes him
    await old.close()
    await new.settle()
    status, body = await olga.call("GET", f"/meetings/{mid}")
    assert max_.id in [p["userId"] for p in body["participants"]]
    # the new one does
    await new.close()
    await olga.ws.wait("MEETING_PARTICIPANT_LEFT", lambda e: e["userId"] == max_.id)
    status, body = await olga.call("GET", f"/meetings/{mid}")
    assert [p["userId"] for p in body["participants"]] == [olga.id]


async def test_socket_closed_by_the_server_on_shutdown(tmp_path):
    from tests.helpers import start_server

    server = await start_server(tmp_path)
    try:
        u = await user(server)
        await server.runner.shutdown()
        # The client's reader (the only one allowed to receive) ends when the server closes.
        await asyncio.wait_for(u.ws._reader, 5)
        assert u.ws.ws.closed and u.ws.ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
    finally:
        await server.stop()


async def test_events_are_typed_dated_and_carry_no_nulls(server):
    room = new_id()
    olga = await user(server, {room: "owner"})
    meeting = await started_meeting(olga, room)
    await olga.join(meeting["id"])
    await olga.call("POST", f"/meetings/{meeting['id']}/stop")
    await olga.ws.wait("MEETING_STOPPED")
    events = [m for m in olga.ws.messages if m["type"].startswith("MEETING_")]
    assert meeting_types(olga.ws) == [
        "MEETING_CREATED",
        "MEETING_STARTED",
        "MEETING_PARTICIPANT_JOINED",
        "MEETING_PARTICIPANT_LEFT",
        "MEETING_STOPPED",
    ]
    for e in events:
        assert isinstance(e["sentDate"], str) and e["meetingId"] == meeting["id"]
        assert None not in e.values()
