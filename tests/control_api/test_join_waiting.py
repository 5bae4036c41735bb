"""The waiting room of scheduled meetings (DESIGN section 5) and who hears about it (section 4).

Cast: room R is owned by Olga and Otto (token grants); Max is a member; Gina is a guest with no
grant at all; Xavier is in no room and never waits.
"""

from __future__ import annotations

import pytest

from tests.helpers import new_id

from .support import is_error, meeting_types, of, started_meeting, user


@pytest.fixture
async def cast(server):
    room = new_id()
    olga = await user(server, {room: "owner"})
    otto = await user(server, {room: "owner"})
    max_ = await user(server, {room: "member"})
    gina = await user(server, guest=True, name="Gina")
    xavier = await user(server)
    meeting = await started_meeting(olga, room, "scheduled")
    return meeting["id"], olga, otto, max_, gina, xavier


async def _queue(owner, mid) -> list[str]:
    status, body = await owner.call("GET", f"/meetings/{mid}/queue")
    assert status == 200, body
    return body["users"]


async def test_owner_is_accepted_members_and_guests_wait(cast):
    mid, olga, otto, max_, gina, xavier = cast
    assert await olga.join(mid) == (200, {"status": "ACCEPTED"})
    assert await max_.join(mid) == (200, {"status": "WAITING"})
    assert await gina.join(mid) == (200, {"status": "WAITING"})
    for owner in (olga, otto):
        first = await owner.ws.wait("MEETING_WAITING_PARTICIPANT_JOINED", lambda e: e["userId"] == max_.id)
        await owner.ws.wait("MEETING_WAITING_PARTICIPANT_JOINED", lambda e: e["userId"] == gina.id)
        assert first["meetingId"] == mid
    await olga.ws.settle()
    for u in (max_, gina, xavier):
        assert of(u.ws, "MEETING_WAITING_PARTICIPANT_JOINED") == []
    assert await _queue(otto, mid) == [max_.id, gina.id]
    status, meeting = await olga.call("GET", f"/meetings/{mid}")
    assert [p["userId"] for p in meeting["participants"]] == [olga.id]
    assert of(olga.ws, "MEETING_PARTICIPANT_JOINED", mid)[-1]["userId"] == olga.id
    assert all(e["userId"] == olga.id for e in of(otto.ws, "MEETING_PARTICIPANT_JOINED"))


async def test_accept_then_join_again_is_accepted_and_makes_a_member(cast):
    mid, olga, otto, max_, gina, xavier = cast
    gina_other = await gina.connect()  # a second tab that did not ask to join
    assert (await gina.join(mid))[1] == {"status": "WAITING"}
    # before: the guest is no member of the room
    assert (await gina.call("GET", f"/meetings/{mid}"))[0] == 403
    assert await olga.call("POST", f"/meetings/{mid}/queue/{gina.id}", {"status": "ACCEPTED"}) == (204, None)
    for ws in (olga.ws, otto.ws, gina.ws):
        ev = await ws.wait("MEETING_WAITING_PARTICIPANT_ACCEPTED")
        assert ev["meetingId"] == mid and ev["userId"] == gina.id
    await olga.ws.settle()
    for ws in (gina_other, max_.ws, xavier.ws):
        assert of(ws, "MEETING_WAITING_PARTICIPANT_ACCEPTED") == []
    assert await _queue(olga, mid) == []
    # accepting again: she no longer waits
    assert (await olga.call("POST", f"/meetings/{mid}/queue/{gina.id}", {"status": "ACCEPTED"}))[0] == 404
    # she joins again and is in
    assert await gina.join(mid) == (200, {"status": "ACCEPTED"})
    ev = await max_.ws.wait("MEETING_PARTICIPANT_JOINED")
    assert ev["userId"] == gina.id
    status, meeting = await gina.call("GET", f"/meetings/{mid}")
    assert status == 200  # a stored member now, with a token that grants nothing
    [p] = meeting["participants"]
    assert p["userId"] == gina.id and p["userType"] == "registered"
    assert mid in [m["id"] for m in (await gina.call("GET", "/meetings"))[1]]
    # the acceptance is used up: after leaving she waits again
    await olga.join(mid)  # keeps the meeting running
    assert await gina.leave(mid) == (204, None)
    assert await gina.join(mid) == (200, {"status": "WAITING"})
    assert await _queue(olga, mid) == [gina.id]


async def test_reject_by_owner(cast):
    mid, olga, otto, max_, gina, xavier = cast
    await max_.join(mid)
    await olga.ws.wait("MEETING_WAITING_PARTICIPANT_JOINED")
    assert await otto.call("POST", f"/meetings/{mid}/queue/{max_.id}", {"status": "REJECTED"}) == (204, None)
    for ws in (olga.ws, otto.ws, max_.ws):
        ev = await ws.wait("MEETING_WAITING_PARTICIPANT_REJECTED")
        assert ev == {**ev, "meetingId": mid, "userId": max_.id}
    await olga.ws.settle()
    assert of(gina.ws, "MEETING_WAITING_PARTICIPANT_REJECTED") == []
    assert await _queue(olga, mid) == []
    # he may ask again: a new request, announced again
    assert (await max_.join(mid))[1] == {"status": "WAITING"}
    await olga.ws.wait("MEETING_WAITING_PARTICIPANT_JOINED")
    assert len(of(olga.ws, "MEETING_WAITING_PARTICIPANT_JOINED")) == 2


async def test_reject_by_the_waiting_user_himself(cast):
    mid, olga, otto, max_, gina, xavier = cast
    await max_.join(mid)
    await gina.join(mid)
    # nobody else but an owner may
    status, body = await gina.call("POST", f"/meetings/{mid}/queue/{max_.id}", {"status": "REJECTED"})
    assert status == 403 and is_error(body)
    status, body = await max_.call("POST", f"/meetings/{mid}/queue/{gina.id}", {"status": "REJECTED"})
    assert status == 403 and is_error(body)
    # nor may a user accept himself
    status, body = await max_.call("POST", f"/meetings/{mid}/queue/{max_.id}", {"status": "ACCEPTED"})
    assert status == 403 and is_error(body)
    assert await _queue(olga, mid) == [max_.id, gina.id]
    assert await gina.call("POST", f"/meetings/{mid}/queue/{gina.id}", {"status": "REJECTED"}) == (204, None)
    for ws in (olga.ws, otto.ws, gina.ws):
        await ws.wait("MEETING_WAITING_PARTICIPANT_REJECTED", lambda e: e["userId"] == gina.id)
    assert await _queue(olga, mid) == [max_.id]


async def test_waiting_again_from_the_same_queue_sends_nothing_new(cast):
    mid, olga, otto, max_, gina, xavier = cast
    assert (await max_.join(mid))[1] == {"status": "WAITING"}
    assert (await max_.join(mid))[1] == {"status": "WAITING"}
    await olga.ws.settle()
    assert len(of(olga.ws, "MEETING_WAITING_PARTICIPANT_JOINED")) == 1
    assert of(max_.ws, "MEETING_WAITING_PARTICIPANT_CLASHED") == []
    assert await _queue(olga, mid) == [max_.id]


async def test_waiting_from_another_queue_clashes_the_old_one(cast):
    mid, olga, otto, max_, gina, xavier = cast
    old = max_.ws
    new = await max_.connect()
    assert (await max_.join(mid, old))[1] == {"status": "WAITING"}
    assert (await max_.join(mid, new))[1] == {"status": "WAITING"}
    ev = await old.wait("MEETING_WAITING_PARTICIPANT_CLASHED")
    assert ev["meetingId"] == mid and "userId" not in ev
    await old.settle()
    assert of(new, "MEETING_WAITING_PARTICIPANT_CLASHED") == []
    for ws in (olga.ws, otto.ws):
        assert of(ws, "MEETING_WAITING_PARTICIPANT_CLASHED") == []
    assert len(of(olga.ws, "MEETING_WAITING_PARTICIPANT_JOINED")) == 1
    assert await _queue(olga, mid) == [max_.id]
    # the answer goes to the queue he waits from now
    await olga.call("POST", f"/meetings/{mid}/queue/{max_.id}", {"status": "ACCEPTED"})
    await new.wait("MEETING_WAITING_PARTICIPANT_ACCEPTED")
    await new.settle()
    assert of(old, "MEETING_WAITING_PARTICIPANT_ACCEPTED") == []


async def test_stop_tells_waiting_users_and_clears_the_queue(cast):
    mid, olga, otto, max_, gina, xavier = cast
    await olga.join(mid)
    await gina.join(mid)
    await max_.join(mid)
    assert len(await _queue(olga, mid)) == 2
    assert await olga.leave(mid) == (204, None)  # the last participant: auto-stop
    for ws in (olga.ws, otto.ws, max_.ws, gina.ws):
        assert (await ws.wait("MEETING_STOPPED"))["meetingId"] == mid
    await olga.ws.settle()
    assert of(xavier.ws, "MEETING_STOPPED") == []
    assert meeting_types(olga.ws)[-2:] == ["MEETING_PARTICIPANT_LEFT", "MEETING_STOPPED"]
    assert await _queue(olga, mid) == []
    # a new start has an empty queue, and accepting a former waiter is a 404
    await olga.call("POST", f"/meetings/{mid}/start")
    assert await _queue(olga, mid) == []
    assert (await olga.call("POST", f"/meetings/{mid}/queue/{gina.id}", {"status": "ACCEPTED"}))[0] == 404


async def test_accepted_but_not_yet_joined_is_dropped_by_stop(cast):
    mid, olga, otto, max_, gina, xavier = cast
    await olga.join(mid)
    await gina.join(mid)
    await olga.call("POST", f"/meetings/{mid}/queue/{gina.id}", {"status": "ACCEPTED"})
    await olga.call("POST", f"/meetings/{mid}/stop")
    await gina.ws.wait("MEETING_STOPPED")
    await olga.call("POST", f"/meetings/{mid}/start")
    # the acceptance did not survive the stop, but the membership did
    assert await gina.join(mid) == (200, {"status": "WAITING"})
    assert (await gina.call("GET", f"/meetings/{mid}"))[0] == 200


async def test_stored_owner_is_accepted_in_his_scheduled_meeting(server):
    creator = await user(server)
    status, meeting = await creator.call("POST", "/meetings", {"name": "s", "meetingType": "scheduled"})
    assert status == 200
    mid = meeting["id"]
    await creator.call("POST", f"/meetings/{mid}/start")
    assert await creator.join(mid) == (200, {"status": "ACCEPTED"})
    status, body = await creator.call("GET", f"/meetings/{mid}")
    assert body["participants"][0]["userType"] == "moderator"
    guest = await user(server, guest=True)
    assert await guest.join(mid) == (200, {"status": "WAITING"})
    ev = await creator.ws.wait("MEETING_WAITING_PARTICIPANT_JOINED")
    assert ev["userId"] == guest.id


async def test_waiting_join_needs_a_started_meeting(server):
    room = new_id()
    olga = await user(server, {room: "owner"})
    gina = await user(server, guest=True)
    status, meeting = await olga.call("POST", "/meetings", {"name": "s", "roomId": room, "meetingType": "scheduled"})
    status, body = await gina.join(meeting["id"])
    assert status == 400 and is_error(body)
    assert await _queue(olga, meeting["id"]) == []
