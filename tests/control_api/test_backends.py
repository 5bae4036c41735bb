"""The API on each store backend (DESIGN §9, §9.2): a representative path through the
operations, a restart, and a race for one room, on SQLite and on a real PostgreSQL.

Not the whole suite twice: the rules themselves are tested once, on the default backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control_api.storage import DB_FILENAME
from tests.helpers import new_id, start_server

from .support import create_meeting, started_meeting, user
from .test_storage import fresh_database


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The `[storage]` settings of one backend (PostgreSQL: a fresh database of its own)."""
    if request.param == "sqlite":
        return {"database_url": ""}
    return {"database_url": await fresh_database(request.getfixturevalue("postgres_server"))}


async def test_a_meeting_from_creation_to_deletion(tmp_path, storage):
    server = await start_server(tmp_path, storage=storage)
    try:
        room = new_id()
        olga = await user(server, {room: "owner"})
        max_ = await user(server, {room: "member"})
        gina = await user(server, guest=True, name="Gina")
        meeting = await create_meeting(olga, room, "scheduled")
        mid = meeting["id"]
        assert (await max_.ws.wait("MEETING_CREATED"))["meetingId"] == mid
        status, body = await olga.call("POST", f"/meetings/{mid}/start")
        assert status == 200 and body["active"] is True
        assert await olga.join(mid) == (200, {"status": "ACCEPTED"})
        assert await gina.join(mid) == (200, {"status": "WAITING"})
        await olga.ws.wait("MEETING_WAITING_PARTICIPANT_JOINED")
        queue = {"users": [gina.id], "names": {gina.id: "Gina"}}
        assert await olga.call("GET", f"/meetings/{mid}/queue") == (200, queue)
        assert await olga.call("POST", f"/meetings/{mid}/queue/{gina.id}", {"status": "ACCEPTED"}) == (204, None)
        await gina.ws.wait("MEETING_WAITING_PARTICIPANT_ACCEPTED")
        assert await gina.join(mid) == (200, {"status": "ACCEPTED"})
        # A stored member now: she hears the room's events with a token that grants nothing.
        assert (await gina.ws.wait("MEETING_PARTICIPANT_JOINED", lambda e: e["userId"] == gina.id))["meetingId"] == mid
        status, body = await gina.call("GET", f"/meetings/{mid}")
        assert status == 200 and [p["userId"] for p in body["participants"]] == [olga.id, gina.id]
        assert await gina.leave(mid) == (204, None)
        await olga.ws.wait("MEETING_PARTICIPANT_LEFT", lambda e: e["userId"] == gina.id)
        status, body = await olga.call("POST", f"/meetings/{mid}/stop")
        assert status == 200 and body["active"] is False
        for u in (olga, max_, gina):
            await u.ws.wait("MEETING_STOPPED")
        assert await olga.call("DELETE", f"/meetings/{mid}") == (204, None)
        await gina.ws.wait("MEETING_DELETED")
        assert (await olga.call("GET", f"/meetings/{mid}"))[0] == 404
        assert (await gina.call("GET", "/meetings"))[1] == []
    finally:
        await server.stop()


async def test_a_restart_stops_every_meeting_and_keeps_the_rest(tmp_path, storage):
    """A second node on the same database sees what a restart after kill -9 sees: the first
    never stopped its meeting nor cleared its queue."""
    first = await start_server(tmp_path, storage=storage)
    try:
        room = new_id()
        olga = await user(first, {room: "owner"})
        gina = await user(first, guest=True)
        xavier = await user(first, guest=True)
        mid = (await started_meeting(olga, room, "scheduled"))["id"]
        own = await create_meeting(olga, None, "permanent", name="olga's own")  # a new room, hers
        await olga.join(mid)
        for u in (gina, xavier):
            assert (await u.join(mid))[1] == {"status": "WAITING"}
        assert await olga.call("POST", f"/meetings/{mid}/queue/{gina.id}", {"status": "ACCEPTED"}) == (204, None)
        # On PostgreSQL the second node has a data directory of its own: the state is in the database.
        second = await start_server(tmp_path / "other" if storage["database_url"] else tmp_path, storage=storage)
        try:
            tok = second.token(olga.id)  # no grant: her rooms are known from the store alone
            status, body = await second.call("GET", "/meetings", tok)
            assert status == 200 and [m["id"] for m in body] == [own["id"]]
            tok = second.token(olga.id, {room: "owner"})
            status, body = await second.call("GET", f"/meetings/{mid}", tok)
            assert status == 200 and body["active"] is False and body["participants"] == []
            assert await second.call("GET", f"/meetings/{mid}/queue", tok) == (200, {"users": []})
            # Gina's acceptance made her a member, and that lasts.
            assert (await second.call("GET", f"/meetings/{mid}", second.token(gina.id)))[0] == 200
            assert (await second.call("GET", f"/meetings/{mid}", second.token(xavier.id)))[0] == 403
        finally:
            await second.stop()
        if storage["database_url"]:
            assert not (tmp_path / "data" / DB_FILENAME).exists()
            assert not (tmp_path / "other" / "data" / DB_FILENAME).exists()
    finally:
        await first.stop()


async def test_creates_racing_for_one_room_one_wins_the_other_is_a_409(tmp_path, storage):
    server = await start_server(tmp_path, storage=storage)
    try:
        for _ in range(5):
            room = new_id()
            olga = await user(server, {room: "owner"}, connect=False)
            body = {"name": "race", "meetingType": "permanent", "roomId": room}
            results = await asyncio.gather(*(olga.call("POST", "/meetings", body) for _ in range(3)))
            statuses = sorted(status for status, _ in results)
            assert statuses == [200, 409, 409], results
            assert all(b["error"] == "conflict" for s, b in results if s == 409)
    finally:
        await server.stop()

