from tests.helpers import new_id


async def test_create_start_join_leave(server):
    owner, room = new_id(), new_id()
    tok = server.token(owner, {room: "owner"})
    ev = await server.events(tok)
    status, meeting = await server.call(
        "POST", "/meetings", tok, {"name": "m", "roomId": room, "meetingType": "permanent"}
    )
    assert status == 200, meeting
    await ev.wait("MEETING_CREATED")
    mid = meeting["id"]
    status, body = await server.call("POST", f"/meetings/{mid}/start", tok)
    assert status == 200 and body["active"] is True
    status, body = await server.call(
        "POST",
        f"/meetings/{mid}/join",
        tok,
        {"audioStreamEnabled": False, "videoStreamEnabled": False},
        headers={"queue-id": ev.queue_id},
    )
    assert (status, body) == (200, {"status": "ACCEPTED"})
    await ev.wait("MEETING_PARTICIPANT_JOINED")
    status, _ = await server.call("POST", f"/meetings/{mid}/leave", tok)
    assert status == 204
    await ev.wait("MEETING_PARTICIPANT_LEFT")
    await ev.wait("MEETING_STOPPED")
