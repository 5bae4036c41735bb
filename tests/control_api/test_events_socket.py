"""The /events websocket (DESIGN section 4): hello, ping/pong, delivery per socket, close = leave,
and clashes of a participant joining from a second socket (section 5)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import uuid

import aiohttp

from control_api.keys import HUB, WEBSOCKETS
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



async def _sessions_gauge(server) -> float:
    async with server.http.get(server.url + "/metrics") as r:
        text = await r.text()
    (line,) = [x for x in text.splitlines() if x.startswith("meeting_sfu_websocket_sessions ")]
    return float(line.split()[1])


class _DeafSocket:
    """A raw /events websocket with a tiny receive buffer that sends pings and never reads the
    pongs: the server's writes to it soon block, then its event queue fills."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        self.sock.setblocking(False)

    async def open(self, url: str, token: str) -> str:
        loop = asyncio.get_running_loop()
        host, port = url.removeprefix("http://").split(":")
        await loop.sock_connect(self.sock, (host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /events HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        await loop.sock_sendall(self.sock, request.encode())
        data = b""
        while b"queueId" not in data or not data.endswith(b"}"):
            data += await asyncio.wait_for(loop.sock_recv(self.sock, 4096), 5)
        return json.loads(data[data.index(b"{") :])["queueId"]

    async def ping(self, n: int) -> None:
        payload = b'{"type":"ping"}'
        mask = os.urandom(4)
        frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, frame * n)

    def close(self) -> None:
        self.sock.close()


async def test_socket_cut_for_overflowing_stops_counting_and_leaves_at_once(server):
    """A client that never reads: once its queue overflows it is cut, and from then on it is no
    longer a session (gauge, leave effects), although its close handshake cannot complete."""
    room, others = new_id(), [new_id() for _ in range(40)]
    olga = await user(server, {r: "owner" for r in (room, *others)})
    max_ = await user(server, {r: "member" for r in (room, *others)}, connect=False)
    meeting = await started_meeting(olga, room)
    await olga.join(meeting["id"])
    deaf = _DeafSocket()
    try:
        queue_id = await deaf.open(server.url, max_.token)
        status, _ = await max_.call(
            "POST",
            f"/meetings/{meeting['id']}/join",
            {"audioStreamEnabled": False, "videoStreamEnabled": False},
            headers={"queue-id": queue_id},
        )
        assert status == 200
        assert await _sessions_gauge(server) == 2
        # A congested path: the server's kernel buffer for this socket is small too (instead of
        # growing to megabytes on loopback), so its writes block soon, as over a stalled network.
        for ws in server.app[WEBSOCKETS]:
            sock = ws._req.transport.get_extra_info("socket")
            if sock.getpeername() == deaf.sock.getsockname():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # Pings, paced, until the server's writes to it block and its queue is nearly full...
        session = server.app[HUB].session(queue_id)
        for _ in range(2000):
            queued = session.outbox.qsize()
            await asyncio.wait_for(deaf.ping(50 if queued < 500 else 10 if queued < 950 else 1), 5)
            await asyncio.sleep(0.005)
            if session.outbox.qsize() >= 1000:
                break
        assert 1000 <= session.outbox.qsize() < 1024 and not session.closed
        # ...then the client goes silent, and room events from someone else overflow its queue.
        for other in others:
            await create_meeting(olga, other)
            if session.closed:
                break
        left = await olga.ws.wait("MEETING_PARTICIPANT_LEFT", lambda e: e["userId"] == max_.id, timeout=2)
        assert left["meetingId"] == meeting["id"]
        assert await _sessions_gauge(server) == 1
        status, body = await olga.call("GET", f"/meetings/{meeting['id']}")
        assert [p["userId"] for p in body["participants"]] == [olga.id]
        # Its close handshake cannot complete (it reads nothing): the server gives up on it
        # after 5 s instead of holding the connection for ever.
        for _ in range(80):
            if len(server.app[WEBSOCKETS]) == 1:
                break
            await asyncio.sleep(0.1)
        assert len(server.app[WEBSOCKETS]) == 1
    finally:
        deaf.close()
