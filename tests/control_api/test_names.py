"""Display names (DESIGN section 4, an extension Carbonio clients ignore): a Participant and the
events MEETING_PARTICIPANT_JOINED and MEETING_WAITING_PARTICIPANT_JOINED carry the joining
token's `name` claim, omitted (never null) when it had none; the queue lists names by user id."""

from __future__ import annotations

from tests.helpers import new_id

from .support import User, started_meeting, user


async def named(server, name: str | None, rooms: dict[str, str] | None = None) -> User:
    return await user(server, rooms, name=name)


async def test_participants_and_joined_events_carry_the_name(server):
    room = new_id()
    olga = await named(server, "Olga Owner", {room: "owner"})
    max_ = await named(server, None, {room: "member"})
    meeting = await started_meeting(olga, room)
    mid = meeting["id"]
    assert (await olga.join(mid))[0] == 200
    assert (await max_.join(mid))[0] == 200
    await olga.ws.wait("MEETING_PARTICIPANT_JOINED", lambda e: e["userId"] == max_.id)
    joined = {e["userId"]: e for e in olga.ws.of_type("MEETING_PARTICIPANT_JOINED")}
    assert joined[olga.id]["name"] == "Olga Owner"
    assert "name" not in joined[max_.id]  # omitted, never null
    status, body = await max_.call("GET", f"/meetings/{mid}")
    assert status == 200
    people = {p["userId"]: p for p in body["participants"]}
    assert people[olga.id]["name"] == "Olga Owner"
    assert "name" not in people[max_.id]


async def test_a_join_from_another_socket_takes_that_tokens_name(server):
    room = new_id()
    olga = await named(server, "Olga", {room: "owner"})
    meeting = await started_meeting(olga, room)
    assert (await olga.join(meeting["id"]))[0] == 200
    olga.token = server.token(olga.id, {room: "owner"}, name="Olga (phone)")
    phone = await olga.connect()
    assert (await olga.join(meeting["id"], phone))[0] == 200
    rejoined = await phone.wait("MEETING_PARTICIPANT_JOINED", lambda e: e.get("name") == "Olga (phone)")
    assert rejoined["userId"] == olga.id
    _, body = await olga.call("GET", f"/meetings/{meeting['id']}")
    assert [p.get("name") for p in body["participants"]] == ["Olga (phone)"]


async def test_waiting_users_names_in_the_event_and_the_queue(server):
    room = new_id()
    olga = await named(server, "Olga", {room: "owner"})
    guest = await user(server, name="Gina Guest", guest=True)
    anonymous = await user(server, guest=True)
    meeting = await started_meeting(olga, room, "scheduled")
    mid = meeting["id"]
    status, body = await olga.call("GET", f"/meetings/{mid}/queue")
    assert (status, body) == (200, {"users": []})  # exactly the seed's shape when nobody waits
    assert await guest.join(mid) == (200, {"status": "WAITING"})
    event = await olga.ws.wait("MEETING_WAITING_PARTICIPANT_JOINED", lambda e: e["userId"] == guest.id)
    assert event["name"] == "Gina Guest"
    assert await anonymous.join(mid) == (200, {"status": "WAITING"})
    event = await olga.ws.wait("MEETING_WAITING_PARTICIPANT_JOINED", lambda e: e["userId"] == anonymous.id)
    assert "name" not in event
    status, body = await olga.call("GET", f"/meetings/{mid}/queue")
    assert status == 200
    assert sorted(body["users"]) == sorted([guest.id, anonymous.id])  # still plain ids
    assert body["names"] == {guest.id: "Gina Guest"}
    # Rejected: gone from the names too; accepted and joined: a participant with his name.
    assert (await olga.call("POST", f"/meetings/{mid}/queue/{anonymous.id}", {"status": "REJECTED"}))[0] == 204
    assert (await olga.call("POST", f"/meetings/{mid}/queue/{guest.id}", {"status": "ACCEPTED"}))[0] == 204
    assert await guest.join(mid) == (200, {"status": "ACCEPTED"})
    assert await olga.call("GET", f"/meetings/{mid}/queue") == (200, {"users": []})
    _, body = await olga.call("GET", f"/meetings/{mid}")
    assert {p["userId"]: p.get("name") for p in body["participants"]} == {guest.id: "Gina Guest"}


async def test_openapi_documents_the_names(server):
    _, doc = await server.call("GET", "/openapi.json")
    schemas = doc["components"]["schemas"]
    participant = schemas["Participant"]["allOf"][1]
    assert participant["properties"]["name"]["type"] == "string"
    assert "name" not in participant["required"]
    assert "names" in schemas["QueuedUsers"]["properties"]
    assert schemas["QueuedUsers"]["required"] == ["users"]
    for event in ("EventParticipantJoined", "EventWaitingParticipantJoined"):
        assert "name" in schemas[event]["properties"] and "name" not in schemas[event]["required"]
