"""Per-meeting locks with the store awaited inside them (control_api/meetings/state.py): what a
call read before it got the lock is checked again once it holds it.

Each test holds a meeting's lock itself, lets calls queue up behind it, changes the world, then
lets go: the calls must act on the world as it is then, not as it was when they came."""

from __future__ import annotations

import asyncio

from control_api.keys import DOMAIN
from tests.helpers import new_id

from .support import create_meeting, started_meeting, user


async def _queued(lock: asyncio.Lock, n: int) -> None:
    """Until `n` calls wait for `lock`."""
    for _ in range(500):
        if len(getattr(lock, "_waiters", None) or ()) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{n} calls never queued on the lock")


async def test_a_start_queued_behind_a_delete_does_not_start_the_deleted_meeting(server):
    room = new_id()
    olga = await user(server, {room: "owner"})
    mid = (await create_meeting(olga, room))["id"]
    lock = server.app[DOMAIN]._lock(mid)
    async with lock:
        delete = asyncio.ensure_future(olga.call("DELETE", f"/meetings/{mid}"))
        await _queued(lock, 1)
        start = asyncio.ensure_future(olga.call("POST", f"/meetings/{mid}/start"))
        await _queued(lock, 2)
    assert await delete == (204, None)
    status, body = await start
    assert status == 404 and body["error"] == "not_found", body
    assert server.app[DOMAIN].active_meetings == 0
    assert (await olga.call("GET", f"/meetings/{mid}"))[0] == 404


async def test_a_join_queued_while_its_socket_closes_leaves_no_participant_behind(server):
    room = new_id()
    olga = await user(server, {room: "owner"})
    max_ = await user(server, {room: "member"})
    mid = (await started_meeting(olga, room))["id"]
    assert (await olga.join(mid))[0] == 200  # keeps the meeting running
    lock = server.app[DOMAIN]._lock(mid)
    async with lock:
        join = asyncio.ensure_future(max_.join(mid))
        await _queued(lock, 1)
        await max_.ws.close()  # socket_closed finds him in no meeting yet
        for _ in range(100):
            if server.app[DOMAIN].hub.session(max_.ws.queue_id) is None:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
    status, body = await join
    assert status == 400 and body["error"] == "bad_queue_id", body
    status, body = await olga.call("GET", f"/meetings/{mid}")
    assert [p["userId"] for p in body["participants"]] == [olga.id]
