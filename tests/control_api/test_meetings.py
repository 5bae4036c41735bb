"""The 18 operations' rules and status codes, and who receives which event (DESIGN 3, 4, 5, 8).

Cast: in room R, Olga owns it and Max is a member (both by token grant); Xavier is in no room;
Dora belongs to another room only.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers import new_id

from .support import create_meeting, is_error, meeting_types, of, started_meeting, user

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@pytest.fixture
async def cast(server):
    room, other_room = new_id(), new_id()
    olga = await user(server, {room: "owner"}, name="Olga")
    max_ = await user(server, {room: "member"}, name="Max")
    xavier = await user(server)
    dora = await user(server, {other_room: "owner"})
    return room, olga, max_, xavier, dora


async def test_create_sends_created_to_room_members_only(cast):
    room, olga, max_, xavier, dora = cast
    meeting = await create_meeting(max_, room)  # any member may create in his room
    assert meeting["roomId"] == room and meeting["active"] is False
    assert meeting["participants"] == [] and "startedAt" not in meeting
    assert RFC3339.match(meeting["createdAt"])
    for u in (olga, max_):
        ev = await u.ws.wait("MEETING_CREATED")
        assert ev["meetingId"] == meeting["id"] and ev["roomId"] == room
        assert RFC3339.match(ev["sentDate"])
    await olga.ws.settle()
    for u in (xavier, dora):
        assert meeting_types(u.ws) == []


async def test_create_rules(cast):
    room, olga, max_, xavier, dora = cast
    status, body = await xavier.call("POST", "/meetings", {"name": "n", "roomId": room, "meetingType": "permanent"})
    assert status == 403 and is_error(body)
    first = await create_meeting(olga, room)
    await olga.ws.wait("MEETING_CREATED")
    status, body = await max_.call("POST", "/meetings", {"name": "again", "roomId": room, "meetingType": "scheduled"})
    assert status == 409 and is_error(body)
    await olga.ws.settle()
    assert len(of(olga.ws, "MEETING_CREATED")) == 1
    status, listed = await olga.call("GET", "/meetings")
    assert [m["id"] for m in listed] == [first["id"]] and listed[0]["name"] == "standup"


async def test_create_without_room_makes_a_room_owned_by_the_caller(cast):
    room, olga, max_, xavier, dora = cast
    meeting = await create_meeting(xavier, None, "scheduled", name="ad hoc")
    assert meeting["roomId"] not in (room,)
    created = await xavier.ws.wait("MEETING_CREATED")  # stored membership: he gets it
    assert created["roomId"] == meeting["roomId"]
    mid = meeting["id"]
    status, listed = await xavier.call("GET", "/meetings")
    assert [m["id"] for m in listed] == [mid]
    # stored owner: owner-only operations work with a token that grants nothing
    assert await xavier.call("GET", f"/meetings/{mid}/queue") == (200, {"users": []})
    # others are not members
    for u in (olga, max_, dora):
        assert (await u.call("GET", f"/meetings/{mid}"))[0] == 403
        assert mid not in [m["id"] for m in (await u.call("GET", "/meetings"))[1]]
        assert of(u.ws, "MEETING_CREATED", mid) == []


async def test_create_expiration(cast):
    room, olga, _, xavier, _ = cast
    status, body = await olga.call(
        "POST",
        "/meetings",
        {"name": "late", "roomId": room, "meetingType": "scheduled", "expiration": "2001-01-01T00:00:00Z"},
    )
    assert status == 400 and is_error(body)
    assert await olga.call("GET", "/meetings") == (200, [])
    # A past expiration is a 400 for a permanent meeting too (DESIGN section 3), and it comes
    # before rights: an outsider's request with one is a 400 as well.
    for who, meeting_room in ((olga, room), (xavier, room)):
        status, body = await who.call(
            "POST",
            "/meetings",
            {"name": "late", "roomId": meeting_room, "meetingType": "permanent", "expiration": "2001-01-01T00:00:00Z"},
        )
        assert status == 400 and is_error(body), body
    assert await olga.call("GET", "/meetings") == (200, [])
    # a permanent meeting accepts a future one and never expires
    meeting = await create_meeting(olga, room, "permanent", expiration="2999-01-01T00:00:00Z")
    assert meeting["meetingType"] == "permanent"


async def test_list_is_the_meetings_of_the_callers_rooms(cast, server):
    room, olga, max_, xavier, dora = cast
    in_room = await create_meeting(olga, room)
    other_room = next(iter(server.authority.verify(dora.token).grants))
    in_other = await create_meeting(dora, other_room)
    assert [m["id"] for m in (await max_.call("GET", "/meetings"))[1]] == [in_room["id"]]
    assert [m["id"] for m in (await dora.call("GET", "/meetings"))[1]] == [in_other["id"]]
    assert await xavier.call("GET", "/meetings") == (200, [])


async def test_get_rules(cast):
    room, olga, max_, xavier, dora = cast
    meeting = await create_meeting(olga, room)
    mid = meeting["id"]
    status, body = await max_.call("GET", f"/meetings/{mid}")
    assert status == 200 and body == meeting
    for u in (xavier, dora):
        status, body = await u.call("GET", f"/meetings/{mid}")
        assert status == 403 and is_error(body)
    status, body = await olga.call("GET", f"/meetings/{new_id()}")
    assert status == 404 and is_error(body)
    status, body = await olga.call("GET", "/meetings/123")
    assert status == 400 and is_error(body)


async def test_start_by_a_member_sends_started_to_room_members(cast):
    room, olga, max_, xavier, dora = cast
    meeting = await create_meeting(olga, room)
    mid = meeting["id"]
    status, body = await xavier.call("POST", f"/meetings/{mid}/start")
    assert status == 403 and is_error(body)
    assert (await olga.call("GET", f"/meetings/{mid}"))[1]["active"] is False
    status, body = await max_.call("POST", f"/meetings/{mid}/start")
    assert status == 200 and body["active"] is True and RFC3339.match(body["startedAt"])
    for u in (olga, max_):
        ev = await u.ws.wait("MEETING_STARTED")
        assert ev["meetingId"] == mid and ev["starterUser"] == max_.id
        assert ev["startedAt"] == body["startedAt"]
    await olga.ws.settle()
    assert of(xavier.ws, "MEETING_STARTED") == [] and of(dora.ws, "MEETING_STARTED") == []
    # starting again keeps the start time (and announces it again)
    status, again = await olga.call("POST", f"/meetings/{mid}/start")
    assert status == 200 and again["startedAt"] == body["startedAt"]
    await max_.ws.wait("MEETING_STARTED")


async def test_stop_rules_and_events(cast):
    room, olga, max_, xavier, dora = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    status, body = await xavier.call("POST", f"/meetings/{mid}/stop")
    assert status == 403 and is_error(body)
    assert (await olga.call("GET", f"/meetings/{mid}"))[1]["active"] is True
    status, body = await max_.call("POST", f"/meetings/{mid}/stop")
    assert status == 200 and body["active"] is False and "startedAt" not in body
    assert body["participants"] == []
    for u in (olga, max_):
        assert (await u.ws.wait("MEETING_STOPPED"))["meetingId"] == mid
    await olga.ws.settle()
    assert of(xavier.ws, "MEETING_STOPPED") == []
    # stopping a stopped meeting is harmless
    status, body = await olga.call("POST", f"/meetings/{mid}/stop")
    assert status == 200 and body["active"] is False
    assert (await olga.call("POST", f"/meetings/{new_id()}/stop"))[0] == 404


async def test_stop_sends_left_for_each_participant_then_stopped(cast):
    room, olga, max_, xavier, dora = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    assert await olga.join(mid) == (200, {"status": "ACCEPTED"})
    assert await max_.join(mid) == (200, {"status": "ACCEPTED"})
    status, body = await olga.call("POST", f"/meetings/{mid}/stop")
    assert status == 200 and body["participants"] == []
    await max_.ws.wait("MEETING_STOPPED")
    types = meeting_types(max_.ws)
    tail = types[types.index("MEETING_PARTICIPANT_JOINED", types.index("MEETING_PARTICIPANT_JOINED") + 1) + 1 :]
    assert tail == ["MEETING_PARTICIPANT_LEFT", "MEETING_PARTICIPANT_LEFT", "MEETING_STOPPED"]
    assert {e["userId"] for e in of(max_.ws, "MEETING_PARTICIPANT_LEFT")} == {olga.id, max_.id}
    await xavier.ws.settle()
    assert meeting_types(xavier.ws) == []


async def test_delete_rules_and_events(cast):
    room, olga, max_, xavier, dora = cast
    meeting = await create_meeting(olga, room)
    mid = meeting["id"]
    status, body = await xavier.call("DELETE", f"/meetings/{mid}")
    assert status == 403 and is_error(body)
    assert (await olga.call("GET", f"/meetings/{mid}"))[0] == 200
    status, body = await max_.call("DELETE", f"/meetings/{mid}")  # any member may delete
    assert (status, body) == (204, None)
    for u in (olga, max_):
        assert (await u.ws.wait("MEETING_DELETED"))["meetingId"] == mid
    await olga.ws.settle()
    assert of(xavier.ws, "MEETING_DELETED") == [] and of(dora.ws, "MEETING_DELETED") == []
    assert (await olga.call("GET", f"/meetings/{mid}"))[0] == 404
    assert (await olga.call("DELETE", f"/meetings/{mid}"))[0] == 404
    # the room is free again
    await create_meeting(olga, room)


async def test_delete_an_active_meeting_stops_it_first(cast):
    room, olga, max_, *_ = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    assert (await max_.join(mid))[0] == 200
    assert (await olga.call("DELETE", f"/meetings/{mid}"))[0] == 204
    await olga.ws.wait("MEETING_DELETED")
    types = meeting_types(olga.ws)
    assert types[-3:] == ["MEETING_PARTICIPANT_LEFT", "MEETING_STOPPED", "MEETING_DELETED"]


async def test_join_permanent(cast):
    room, olga, max_, xavier, dora = cast
    meeting = await create_meeting(olga, room)
    mid = meeting["id"]
    status, body = await max_.join(mid)  # not started
    assert status == 400 and is_error(body)
    await olga.call("POST", f"/meetings/{mid}/start")
    status, body = await xavier.join(mid)
    assert status == 403 and is_error(body)
    assert (await dora.join(mid))[0] == 403
    assert (await max_.join(new_id()))[0] == 404
    assert await max_.join(mid) == (200, {"status": "ACCEPTED"})
    for u in (olga, max_):
        ev = await u.ws.wait("MEETING_PARTICIPANT_JOINED")
        assert ev["meetingId"] == mid and ev["userId"] == max_.id
    status, body = await olga.call("GET", f"/meetings/{mid}")
    [p] = body["participants"]
    assert p["userId"] == max_.id and p["userType"] == "registered"
    assert p["queueId"] == max_.ws.queue_id
    assert p["audioStreamEnabled"] is False and p["videoStreamEnabled"] is False
    assert p["screenStreamEnabled"] is False and RFC3339.match(p["joinedAt"])
    assert await olga.join(mid) == (200, {"status": "ACCEPTED"})
    status, body = await max_.call("GET", f"/meetings/{mid}")
    assert {p["userId"]: p["userType"] for p in body["participants"]} == {
        max_.id: "registered",
        olga.id: "moderator",
    }
    await xavier.ws.settle()
    assert meeting_types(xavier.ws) == []


async def test_join_same_queue_twice_is_409(cast):
    room, olga, max_, *_ = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    assert (await max_.join(mid))[0] == 200
    await olga.ws.wait("MEETING_PARTICIPANT_JOINED")
    status, body = await max_.join(mid)
    assert status == 409 and is_error(body)
    await olga.ws.settle()
    assert len(of(olga.ws, "MEETING_PARTICIPANT_JOINED")) == 1
    assert of(max_.ws, "MEETING_PARTICIPANT_CLASHED") == []


async def test_leave_rules(cast):
    room, olga, max_, xavier, dora = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    assert (await olga.join(mid))[0] == 200
    # not in the meeting: a no-op
    assert await max_.leave(mid) == (204, None)
    status, body = await xavier.leave(mid)
    assert status == 403 and is_error(body)
    assert (await max_.leave(new_id()))[0] == 404
    await olga.ws.settle()
    assert of(olga.ws, "MEETING_PARTICIPANT_LEFT") == []
    assert (await olga.call("GET", f"/meetings/{mid}"))[1]["active"] is True
    # leaving a stopped meeting is a no-op too
    other = await create_meeting(dora, next(iter(dora.server.authority.verify(dora.token).grants)))
    assert await dora.leave(other["id"]) == (204, None)


async def test_last_leave_stops_the_meeting(cast):
    room, olga, max_, xavier, _ = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    await olga.join(mid)
    await max_.join(mid)
    assert await olga.leave(mid) == (204, None)
    ev = await max_.ws.wait("MEETING_PARTICIPANT_LEFT")
    assert ev["userId"] == olga.id
    await max_.ws.settle()
    assert of(max_.ws, "MEETING_STOPPED") == []
    assert (await olga.call("GET", f"/meetings/{mid}"))[1]["active"] is True
    assert await max_.leave(mid) == (204, None)
    await olga.ws.wait("MEETING_PARTICIPANT_LEFT", lambda e: e["userId"] == max_.id)
    await olga.ws.wait("MEETING_STOPPED")
    types = meeting_types(olga.ws)
    assert types[-2:] == ["MEETING_PARTICIPANT_LEFT", "MEETING_STOPPED"]
    status, body = await olga.call("GET", f"/meetings/{mid}")
    assert body["active"] is False and body["participants"] == [] and "startedAt" not in body


async def test_get_queue_rules(cast):
    room, olga, max_, xavier, _ = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    assert await olga.call("GET", f"/meetings/{mid}/queue") == (200, {"users": []})
    status, body = await max_.call("GET", f"/meetings/{mid}/queue")
    assert status == 403 and is_error(body)
    assert (await xavier.call("GET", f"/meetings/{mid}/queue"))[0] == 403
    assert (await olga.call("GET", f"/meetings/{new_id()}/queue"))[0] == 404


async def test_update_queued_user_rules(cast):
    room, olga, max_, xavier, _ = cast
    meeting = await started_meeting(olga, room, "scheduled")
    mid = meeting["id"]
    # nobody waits: 404 for owner and for the user himself
    status, body = await olga.call("POST", f"/meetings/{mid}/queue/{max_.id}", {"status": "ACCEPTED"})
    assert status == 404 and is_error(body)
    assert (await max_.call("POST", f"/meetings/{mid}/queue/{max_.id}", {"status": "REJECTED"}))[0] == 404
    assert (await olga.call("POST", f"/meetings/{new_id()}/queue/{max_.id}", {"status": "ACCEPTED"}))[0] == 404
    status, body = await olga.call("POST", f"/meetings/{mid}/queue/{max_.id}", {"status": "WAITING"})
    assert status == 400 and is_error(body)
    status, body = await olga.call("POST", f"/meetings/{mid}/queue/me", {"status": "ACCEPTED"})
    assert status == 400 and is_error(body)


async def test_media_routes_check_auth_syntax_existence_rights_before_media(cast):
    room, olga, max_, xavier, _ = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    calls = [
        ("PUT", "media", {"type": "video", "enabled": True, "sdp": "v=0"}),
        ("PUT", "media/answer", {"sdp": "v=0"}),
        ("PUT", "media/subscribe", {"subscribe": [{"userId": olga.id, "type": "video"}], "unsubscribe": []}),
        ("PUT", "audio", {"enabled": True}),
        ("PUT", "audio/offer", {"sdp": "v=0"}),
        ("POST", "startRecording", None),
        ("POST", "stopRecording", {"name": "rec", "folderId": "f"}),
    ]
    for method, tail, body in calls:
        path = f"/meetings/{mid}/{tail}"
        assert (await xavier.server.call(method, path, None, body))[0] == 401, tail
        if body is not None:
            status, err = await max_.call(method, path, {"nonsense": 1})
            assert status == 400 and is_error(err), (tail, status, err)
        status, err = await max_.call(method, f"/meetings/{new_id()}/{tail}", body)
        assert status == 404 and is_error(err), (tail, status, err)
        status, err = await xavier.call(method, path, body)
        # recording checks "a participant" (404) before "the owner" (403): DESIGN section 7
        expected = 404 if "Recording" in tail else 403
        assert status == expected and is_error(err), (tail, status, err)
        # a member who is not a participant is not found in the meeting
        status, err = await max_.call(method, path, body)
        assert status == 404 and is_error(err), (tail, status, err)


async def test_audio_moderation_rules(cast):
    room, olga, max_, *_ = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    await olga.join(mid)
    await max_.join(mid)
    # a member may not mute someone else
    status, body = await max_.call("PUT", f"/meetings/{mid}/audio", {"enabled": False, "userToModerate": olga.id})
    assert status == 403 and is_error(body)
    # a moderator may not unmute someone else
    status, body = await olga.call("PUT", f"/meetings/{mid}/audio", {"enabled": True, "userToModerate": max_.id})
    assert status == 400 and is_error(body)
    # the target must be a participant
    status, body = await olga.call("PUT", f"/meetings/{mid}/audio", {"enabled": False, "userToModerate": new_id()})
    assert status == 404 and is_error(body)
    # muting a muted participant changes nothing
    assert (await olga.call("PUT", f"/meetings/{mid}/audio", {"enabled": False, "userToModerate": max_.id}))[0] == 204
    await max_.ws.settle()
    assert of(max_.ws, "MEETING_AUDIO_STREAM_CHANGED") == []


async def test_recording_rules_before_media(cast):
    room, olga, max_, *_ = cast
    meeting = await create_meeting(olga, room)
    mid = meeting["id"]
    status, body = await olga.call("POST", f"/meetings/{mid}/startRecording")
    assert status == 400 and is_error(body)  # not active
    await olga.call("POST", f"/meetings/{mid}/start")
    status, body = await olga.call("POST", f"/meetings/{mid}/startRecording")
    assert status == 404 and is_error(body)  # not a participant
    await max_.join(mid)
    status, body = await max_.call("POST", f"/meetings/{mid}/startRecording")
    assert status == 403 and is_error(body)  # not a moderator
    await olga.join(mid)
    for name in ("../x", "a/b", "..", ".", "a\\b", "x" * 129, "", "bad\x07"):
        status, body = await olga.call("POST", f"/meetings/{mid}/stopRecording", {"name": name, "folderId": "f"})
        assert status == 400 and is_error(body), name
        status, body = await olga.call("POST", f"/meetings/{mid}/stopRecording", {"name": "n", "folderId": name})
        assert status == 400 and is_error(body), name
    # nothing running: stopping is a silent 204
    assert (await olga.call("POST", f"/meetings/{mid}/stopRecording", {"name": "n", "folderId": "f"}))[0] == 204
    assert of(max_.ws, "MEETING_RECORDING_STOPPED") == []


async def test_update_media_disable_when_off_is_a_noop(cast):
    room, olga, max_, *_ = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    await olga.join(mid)
    await max_.join(mid)
    for kind in ("video", "screen"):
        assert (await max_.call("PUT", f"/meetings/{mid}/media", {"type": kind, "enabled": False}))[0] == 204
    status, body = await max_.call("PUT", f"/meetings/{mid}/media", {"type": "video", "enabled": True})
    assert status == 400 and is_error(body)  # enabling needs an offer
    await olga.ws.settle()
    assert of(olga.ws, "MEETING_MEDIA_STREAM_CHANGED") == []
    status, body = await max_.call(
        "PUT",
        f"/meetings/{mid}/media/subscribe",
        {"subscribe": [{"userId": max_.id, "type": "video"}], "unsubscribe": []},
    )
    assert status == 400 and is_error(body)  # not his own streams
    status, body = await max_.call("PUT", f"/meetings/{mid}/media/subscribe", {"subscribe": [], "unsubscribe": []})
    assert status == 400 and is_error(body)


async def test_join_body_is_validated(cast):
    room, olga, *_ = cast
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    for body in ({}, {"audioStreamEnabled": False}, {"audioStreamEnabled": "no", "videoStreamEnabled": False}):
        status, err = await olga.call("POST", f"/meetings/{mid}/join", body, headers={"queue-id": olga.ws.queue_id})
        assert status == 400 and is_error(err), body
    assert (await olga.call("GET", f"/meetings/{mid}"))[1]["participants"] == []
    assert await olga.join(mid) == (200, {"status": "ACCEPTED"})


async def test_media_calls_answer_503_when_the_media_plane_is_down(tmp_path):
    """A media plane that cannot serve (here: shut down): the control plane keeps working, and
    each media call reaches it only after every control-plane check passed."""
    from control_api.keys import MEDIA
    from tests.helpers import start_server

    server = await start_server(tmp_path)
    await server.app[MEDIA].close()
    try:
        room = new_id()
        olga = await user(server, {room: "owner"})
        max_ = await user(server, {room: "member"})
        meeting = await started_meeting(olga, room)
        mid = meeting["id"]
        await olga.join(mid)
        await max_.join(mid)
        for method, tail, body in [
            ("PUT", "media", {"type": "video", "enabled": True, "sdp": "v=0"}),
            ("PUT", "media/subscribe", {"subscribe": [{"userId": olga.id, "type": "video"}], "unsubscribe": []}),
            ("PUT", "audio/offer", {"sdp": "v=0"}),
        ]:
            status, err = await max_.call(method, f"/meetings/{mid}/{tail}", body)
            assert status == 503 and is_error(err), (tail, status, err)
        status, err = await olga.call("POST", f"/meetings/{mid}/startRecording")
        assert status == 503 and is_error(err) and err["error"] == "media_unavailable"
        status, err = await max_.call("POST", f"/meetings/{mid}/startRecording")
        assert status == 403  # rights first
        status, body = await olga.call("GET", f"/meetings/{mid}")
        assert "recStartedAt" not in body
        assert all(not p["videoStreamEnabled"] for p in body["participants"])
        await max_.ws.settle()
        assert of(max_.ws, "MEETING_SDP_ANSWERED") == [] and of(max_.ws, "MEETING_RECORDING_STARTED") == []
        assert await max_.leave(mid) == (204, None)
        assert await olga.leave(mid) == (204, None)
        await max_.ws.wait("MEETING_STOPPED")
    finally:
        await server.stop()
