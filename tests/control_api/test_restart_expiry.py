"""Durable state across restarts (DESIGN section 9) and expiry of scheduled meetings (section 3)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from tests.helpers import new_id, start_server

from .support import create_meeting, of, started_meeting, user


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def test_meetings_rooms_and_memberships_survive_a_restart(tmp_path):
    server = await start_server(tmp_path)
    room = new_id()
    try:
        olga = await user(server, {room: "owner"})
        gina = await user(server, guest=True)
        creator = await user(server, connect=False)
        olga_id, gina_id, creator_id = olga.id, gina.id, creator.id
        scheduled = await started_meeting(olga, room, "scheduled", name="Planning")
        own = await create_meeting(creator, None, "permanent", name="Mine")
        mid = scheduled["id"]
        await olga.join(mid)
        await gina.join(mid)
        await olga.call("POST", f"/meetings/{mid}/queue/{gina_id}", {"status": "ACCEPTED"})
        assert await gina.join(mid) == (200, {"status": "ACCEPTED"})
        # someone else waits when the server goes down
        waiter = await user(server, guest=True)
        assert (await waiter.join(mid))[1] == {"status": "WAITING"}
        status, before = await olga.call("GET", f"/meetings/{mid}")
        assert before["active"] is True and len(before["participants"]) == 2
    finally:
        await server.stop()

    server = await start_server(tmp_path)
    try:
        olga_tok = server.token(olga_id, {room: "owner"})
        status, after = await server.call("GET", f"/meetings/{mid}", olga_tok)
        assert status == 200
        assert after["active"] is False and after["participants"] == [] and "startedAt" not in after
        for key in ("id", "name", "roomId", "createdAt", "meetingType"):
            assert after[key] == before[key]
        # the accepted guest is still a member of the room; the creator still owns his room
        status, body = await server.call("GET", f"/meetings/{mid}", server.token(gina_id))
        assert status == 200
        creator_tok = server.token(creator_id)
        status, listed = await server.call("GET", "/meetings", creator_tok)
        assert [m["id"] for m in listed] == [own["id"]] and listed[0]["name"] == "Mine"
        assert await server.call("GET", f"/meetings/{own['id']}/queue", creator_tok) == (200, {"users": []})
        # the waiting queue is empty, and the room still refuses a second meeting
        assert await server.call("GET", f"/meetings/{mid}/queue", olga_tok) == (200, {"users": []})
        status, _ = await server.call(
            "POST", "/meetings", olga_tok, {"name": "dup", "roomId": room, "meetingType": "permanent"}
        )
        assert status == 409
        assert (await server.call("GET", f"/public/meetings/{mid}")) == (200, {"name": "Planning"})
        # it can be started again
        status, body = await server.call("POST", f"/meetings/{mid}/start", olga_tok)
        assert status == 200 and body["active"] is True and body["participants"] == []
    finally:
        await server.stop()


async def test_generated_secret_survives_a_restart(tmp_path):
    server = await start_server(tmp_path, auth={"jwt_secret": ""})
    try:
        tok = server.token(new_id())
        assert (await server.call("GET", "/meetings", tok))[0] == 200
        secret_file = tmp_path / "data" / "jwt_secret"
        assert secret_file.stat().st_mode & 0o777 == 0o600
    finally:
        await server.stop()
    server = await start_server(tmp_path, auth={"jwt_secret": ""})
    try:
        assert (await server.call("GET", "/meetings", tok))[0] == 200
    finally:
        await server.stop()


async def test_scheduled_meeting_is_deleted_after_its_expiration(tmp_path):
    server = await start_server(tmp_path, meetings={"expiry_check_seconds": 0.1})
    try:
        room, room2, room3 = new_id(), new_id(), new_id()
        olga = await user(server, {room: "owner", room2: "owner", room3: "owner"})
        max_ = await user(server, {room: "member"})
        outsider = await user(server)
        short = await create_meeting(olga, room, "scheduled", expiration=_in(1.0))
        later = await create_meeting(olga, room2, "scheduled", expiration=_in(3600))
        forever = await create_meeting(olga, room3, "permanent", expiration=_in(0.5))
        started = time.monotonic()
        for u in (olga, max_):
            ev = await u.ws.wait("MEETING_DELETED", timeout=5)
            assert ev["meetingId"] == short["id"]
        assert time.monotonic() - started >= 0.7  # not before its time
        await olga.ws.settle(0.5)
        assert of(outsider.ws, "MEETING_DELETED") == []
        assert len(of(olga.ws, "MEETING_DELETED")) == 1
        assert (await olga.call("GET", f"/meetings/{short['id']}"))[0] == 404
        assert (await olga.call("GET", f"/meetings/{later['id']}"))[0] == 200
        assert (await olga.call("GET", f"/meetings/{forever['id']}"))[0] == 200
        # the room is free again
        await create_meeting(olga, room)
    finally:
        await server.stop()


async def test_active_scheduled_meeting_expires_when_it_stops(tmp_path):
    server = await start_server(tmp_path, meetings={"expiry_check_seconds": 0.1})
    try:
        room = new_id()
        olga = await user(server, {room: "owner"})
        meeting = await started_meeting(olga, room, "scheduled", expiration=_in(0.8))
        mid = meeting["id"]
        await olga.join(mid)
        await asyncio.sleep(1.5)
        status, body = await olga.call("GET", f"/meetings/{mid}")
        assert status == 200 and body["active"] is True
        assert of(olga.ws, "MEETING_DELETED") == []
        assert await olga.leave(mid) == (204, None)  # last one out: stops, then deleted
        await olga.ws.wait("MEETING_STOPPED")
        assert (await olga.ws.wait("MEETING_DELETED"))["meetingId"] == mid
        types = [t for t in olga.ws.types() if t.startswith("MEETING_")]
        assert types[-3:] == ["MEETING_PARTICIPANT_LEFT", "MEETING_STOPPED", "MEETING_DELETED"]
        assert (await olga.call("GET", f"/meetings/{mid}"))[0] == 404
    finally:
        await server.stop()


async def test_expired_meeting_stopped_explicitly_answers_inactive_and_is_gone(tmp_path):
    server = await start_server(tmp_path, meetings={"expiry_check_seconds": 0.1})
    try:
        room = new_id()
        olga = await user(server, {room: "owner"})
        meeting = await started_meeting(olga, room, "scheduled", expiration=_in(0.5))
        mid = meeting["id"]
        await asyncio.sleep(1.0)
        status, body = await olga.call("POST", f"/meetings/{mid}/stop")
        assert status == 200 and body["active"] is False and body["participants"] == []
        assert "startedAt" not in body
        await olga.ws.wait("MEETING_DELETED")
        assert (await olga.call("GET", f"/meetings/{mid}"))[0] == 404
    finally:
        await server.stop()


async def test_expiry_survives_a_restart_and_odd_offsets(tmp_path):
    server = await start_server(tmp_path)
    room, room2 = new_id(), new_id()
    owner_id = new_id()
    try:
        olga = await user(server, connect=False)
        olga.token = server.token(owner_id, {room: "owner", room2: "owner"})
        short = await create_meeting(olga, room, "scheduled", expiration=_in(1.0))
        # the latest representable instant, with an offset that puts it past year 9999 in UTC
        far = await create_meeting(olga, room2, "scheduled", expiration="9999-12-31T23:59:59-01:00")
    finally:
        await server.stop()
    await asyncio.sleep(1.2)
    server = await start_server(tmp_path, meetings={"expiry_check_seconds": 0.1})
    try:
        tok = server.token(owner_id, {room: "owner", room2: "owner"})
        deadline = time.monotonic() + 5
        while (await server.call("GET", f"/meetings/{short['id']}", tok))[0] != 404:
            assert time.monotonic() < deadline, "expired meeting not deleted after restart"
            await asyncio.sleep(0.1)
        assert (await server.call("GET", f"/meetings/{far['id']}", tok))[0] == 200
    finally:
        await server.stop()


async def test_restart_after_a_crash_stops_meetings_and_empties_the_queue(tmp_path):
    """A second process on the same data directory sees what a restart after kill -9 sees:
    the first one never got to stop its meeting or clear its queue."""
    first = await start_server(tmp_path)
    try:
        room = new_id()
        olga = await user(first, {room: "owner"})
        gina = await user(first, guest=True)
        meeting = await started_meeting(olga, room, "scheduled")
        mid = meeting["id"]
        await olga.join(mid)
        assert (await gina.join(mid))[1] == {"status": "WAITING"}
        assert (await olga.call("GET", f"/meetings/{mid}/queue"))[1] == {"users": [gina.id]}
        second = await start_server(tmp_path)
        try:
            tok = second.token(olga.id, {room: "owner"})
            status, body = await second.call("GET", f"/meetings/{mid}", tok)
            assert status == 200 and body["active"] is False and body["participants"] == []
            assert await second.call("GET", f"/meetings/{mid}/queue", tok) == (200, {"users": []})
        finally:
            await second.stop()
    finally:
        await first.stop()
