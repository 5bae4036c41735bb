"""A database that goes away while the node runs (DESIGN §8, §9.2): calls that need it answer
503 with a JSON error within seconds (never a 500, never a hang), calls that do not go on, and
the node serves again by itself once the database is back.

Each test runs a PostgreSQL of its own, stopped and started (or paused) by its PID here: the
session's shared server is never taken down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.helpers import new_id, start_server
from tests.servers import PostgresServer, postgres_bindir

from .support import create_meeting, is_error, started_meeting, user

# Ours: a 2 s connect and a 3 s statement limit (storage/postgres.py); a margin for a loaded machine.
FEW_SECONDS = 10.0


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/test installs it with apt-get)")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        if server.proc is not None:
            server.resume()  # a paused server would not hear the stop
        server.close()


async def _timed(coro):  # noqa: ANN001, ANN202
    started = time.monotonic()
    result = await coro
    return result, time.monotonic() - started


@pytest.mark.parametrize("outage", ["stopped", "paused"])
async def test_an_outage_answers_503_within_seconds_and_the_node_recovers(tmp_path, own_postgres, outage):
    """Stopped: connections refused or cut. Paused (SIGSTOP): the server keeps its sockets and
    answers nothing, as an overloaded or partitioned one does."""
    pg = own_postgres
    server = await start_server(tmp_path, storage={"database_url": pg.url()})
    try:
        room = new_id()
        olga = await user(server, {room: "owner"})
        mid = (await started_meeting(olga, room))["id"]
        assert await olga.join(mid) == (200, {"status": "ACCEPTED"})
        if outage == "stopped":
            pg.stop()
        else:
            pg.pause()
        try:
            calls = [
                ("GET", f"/meetings/{mid}", None),
                ("GET", "/meetings", None),
                ("POST", "/meetings", {"name": "x", "meetingType": "permanent"}),
                ("POST", f"/meetings/{mid}/leave", None),
            ]
            for method, path, body in calls:
                (status, answer), took = await _timed(olga.call(method, path, body))
                assert status == 503 and is_error(answer), (method, path, status, answer)
                assert answer["error"] == "store_unavailable"
                assert took < FEW_SECONDS, (method, path, took)
            # What needs no database goes on.
            assert (await olga.call("GET", "/health"))[0] == 200
            other = await user(server, {room: "member"})  # an events socket opens
            await other.ws.send({"type": "ping"})
            await other.ws.wait("pong")
            # The refused leave changed nothing: she is still in.
        finally:
            if outage == "stopped":
                pg.start()  # on the port it had
            else:
                pg.resume()
        # Back by itself: nothing restarted on our side.
        deadline = time.monotonic() + FEW_SECONDS
        while True:
            status, body = await olga.call("GET", f"/meetings/{mid}")
            if status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert status == 200, body
        assert body["active"] is True and [p["userId"] for p in body["participants"]] == [olga.id]
        created = await create_meeting(olga, None)
        assert (await olga.call("GET", f"/meetings/{created['id']}"))[0] == 200
        assert await olga.leave(mid) == (204, None)  # the last one out: the meeting stops
        await olga.ws.wait("MEETING_STOPPED")
    finally:
        await server.stop()
