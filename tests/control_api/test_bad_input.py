"""Bad input is a 4xx with a JSON {error, message} body, and changes nothing (DESIGN section 8)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import new_id, start_server

from .support import create_meeting, is_error, started_meeting, user

JSON_HEADERS = {"Content-Type": "application/json"}

MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"{'name': 'x'}", id="single-quotes"),
    pytest.param(b'{"name": "x",}', id="trailing-comma"),
    pytest.param(b'{"name": NaN}', id="nan"),
    pytest.param(b'{"name": Infinity}', id="infinity"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'"text"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"\xff\xfe{}", id="invalid-utf8"),
    pytest.param(b'{"name": "caf\xe9"}', id="latin1"),
    pytest.param(b'{"name": "\\ud800", "meetingType": "permanent"}', id="lone-surrogate"),
    pytest.param(b'{"name": "ok", "meetingType": "permanent", "\\udfff": 1}', id="lone-surrogate-key"),
    pytest.param(b"[" * 100000 + b"]" * 100000, id="deep-nesting"),
]


async def _state(u) -> list:
    status, listed = await u.call("GET", "/meetings")
    assert status == 200
    return listed


@pytest.mark.parametrize("raw", MALFORMED)
async def test_malformed_bodies_are_400(server, raw):
    room = new_id()
    owner = await user(server, {room: "owner"})
    before = await _state(owner)
    status, body = await owner.call("POST", "/meetings", data=raw, headers=JSON_HEADERS)
    assert status == 400 and is_error(body), body
    assert await _state(owner) == before == []
    await owner.ws.settle(0.05)
    assert owner.ws.of_type("MEETING_CREATED") == []


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"meetingType": "permanent"}, id="missing-name"),
        pytest.param({"name": "x"}, id="missing-type"),
        pytest.param({"name": "", "meetingType": "permanent"}, id="empty-name"),
        pytest.param({"name": "x" * 257, "meetingType": "permanent"}, id="long-name"),
        pytest.param({"name": 5, "meetingType": "permanent"}, id="name-not-string"),
        pytest.param({"name": ["x"], "meetingType": "permanent"}, id="name-list"),
        pytest.param({"name": "x", "meetingType": "PERMANENT"}, id="enum-case"),
        pytest.param({"name": "x", "meetingType": "daily"}, id="enum-unknown"),
        pytest.param({"name": "x", "meetingType": 1}, id="enum-type"),
        pytest.param({"name": "x", "meetingType": "permanent", "roomId": "room"}, id="room-not-uuid"),
        pytest.param({"name": "x", "meetingType": "permanent", "roomId": 12}, id="room-number"),
        pytest.param({"name": "x", "meetingType": "scheduled", "expiration": "tomorrow"}, id="bad-date"),
        pytest.param({"name": "x", "meetingType": "scheduled", "expiration": "2999-01-01"}, id="date-only"),
        pytest.param({"name": "x", "meetingType": "scheduled", "expiration": 4102444800}, id="date-number"),
        pytest.param({"name": None, "meetingType": "permanent"}, id="null-name"),
    ],
)
async def test_create_field_errors_are_400(server, payload):
    room = new_id()
    owner = await user(server, {room: "owner"})
    status, body = await owner.call("POST", "/meetings", payload)
    assert status == 400 and is_error(body), body
    assert await _state(owner) == []


async def test_extra_fields_are_allowed(server):
    room = new_id()
    owner = await user(server, {room: "owner"})
    meeting = await create_meeting(owner, room, somethingElse={"nested": [1]})
    assert "somethingElse" not in meeting
    # a 256 character name is the longest accepted
    other = await user(server, {new_id(): "owner"})
    room2 = next(iter(server.authority.verify(other.token).grants))
    assert (await create_meeting(other, room2, name="é" * 256))["name"] == "é" * 256


@pytest.mark.parametrize(
    "tail,payload",
    [
        ("join", {"audioStreamEnabled": 1, "videoStreamEnabled": False}),
        ("join", {"audioStreamEnabled": "true", "videoStreamEnabled": False}),
        ("media", {"type": "audio", "enabled": True, "sdp": "v=0"}),
        ("media", {"type": "VIDEO", "enabled": False}),
        ("media", {"type": "video"}),
        ("media", {"type": "video", "enabled": True, "sdp": "x" * (256 * 1024 + 1)}),
        ("media", {"type": "video", "enabled": True, "sdp": 5}),
        ("media/answer", {}),
        ("media/answer", {"sdp": ["v=0"]}),
        ("media/subscribe", {"subscribe": []}),
        ("media/subscribe", {"subscribe": {}, "unsubscribe": []}),
        ("media/subscribe", {"subscribe": [1], "unsubscribe": []}),
        ("media/subscribe", {"subscribe": [{"userId": "u", "type": "video"}], "unsubscribe": []}),
        ("media/subscribe", {"subscribe": [{"userId": new_id(), "type": "audio"}], "unsubscribe": []}),
        ("media/subscribe", {"subscribe": [{"userId": new_id(), "type": "video"}] * 101, "unsubscribe": []}),
        ("audio", {}),
        ("audio", {"enabled": "false"}),
        ("audio", {"enabled": False, "userToModerate": "someone"}),
        ("audio/offer", {"sdp": None}),
        ("stopRecording", {"name": "n"}),
        ("stopRecording", {"name": "n", "folderId": 3}),
    ],
)
async def test_operation_bodies_are_validated(server, tail, payload):
    room = new_id()
    owner = await user(server, {room: "owner"})
    meeting = await started_meeting(owner, room)
    mid = meeting["id"]
    await owner.join(mid)
    method = "POST" if tail in ("join", "stopRecording") else "PUT"
    headers = {"queue-id": owner.ws.queue_id} if tail == "join" else None
    status, body = await owner.call(method, f"/meetings/{mid}/{tail}", payload, headers=headers)
    assert status == 400 and is_error(body), (tail, payload, body)
    status, after = await owner.call("GET", f"/meetings/{mid}")
    [p] = after["participants"]
    assert p["audioStreamEnabled"] is p["videoStreamEnabled"] is p["screenStreamEnabled"] is False


async def test_queue_update_body_is_validated(server):
    room = new_id()
    owner = await user(server, {room: "owner"})
    guest = await user(server, guest=True)
    meeting = await started_meeting(owner, room, "scheduled")
    mid = meeting["id"]
    await guest.join(mid)
    for payload in ({}, {"status": "accepted"}, {"status": "WAITING"}, {"status": True}):
        status, body = await owner.call("POST", f"/meetings/{mid}/queue/{guest.id}", payload)
        assert status == 400 and is_error(body), payload
    assert (await owner.call("GET", f"/meetings/{mid}/queue"))[1] == {"users": [guest.id]}


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/meetings/{bad}"),
        ("DELETE", "/meetings/{bad}"),
        ("POST", "/meetings/{bad}/start"),
        ("POST", "/meetings/{bad}/stop"),
        ("POST", "/meetings/{bad}/leave"),
        ("GET", "/meetings/{bad}/queue"),
        ("POST", "/meetings/{mid}/queue/{bad}"),
        ("POST", "/meetings/{bad}/startRecording"),
        ("GET", "/public/meetings/{bad}"),
    ],
)
@pytest.mark.parametrize(
    "bad", ["abc", "12345678-1234-1234-1234-12345678901", "1234567812341234123412345678901z", "%00", "%F0%9F%92%A9"]
)
async def test_non_uuid_path_ids_are_400(server, method, path, bad):
    room = new_id()
    owner = await user(server, {room: "owner"}, connect=False)
    meeting = await started_meeting(owner, room)
    body = {"status": "ACCEPTED"} if "queue" in path and method == "POST" else None
    status, err = await owner.call(method, path.format(bad=bad, mid=meeting["id"]), body)
    assert status == 400 and is_error(err), (status, err)
    status, after = await owner.call("GET", f"/meetings/{meeting['id']}")
    assert status == 200 and after["active"] is True


async def test_bodies_over_the_limit_are_413(tmp_path):
    server = await start_server(tmp_path, server={"max_body_bytes": 1024})
    try:
        room = new_id()
        owner = await user(server, {room: "owner"})
        big = json.dumps({"name": "x", "meetingType": "permanent", "roomId": room, "pad": "p" * 2000})
        status, body = await owner.call("POST", "/meetings", data=big, headers=JSON_HEADERS)
        assert status == 413 and is_error(body), body
        assert await _state(owner) == []
        meeting = await started_meeting(owner, room)
        status, body = await owner.call(
            "PUT", f"/meetings/{meeting['id']}/media", {"type": "video", "enabled": True, "sdp": "v" * 5000}
        )
        assert status == 413 and is_error(body), body
        # under the limit still works
        assert (await owner.call("GET", f"/meetings/{meeting['id']}"))[0] == 200
    finally:
        await server.stop()


async def test_unknown_route_is_404_json(server):
    tok = server.token(new_id())
    for path in ("/nothing", "/meetings/x/y/z/w", "/public", "/public/meetings"):
        status, body = await server.call("GET", path, tok)
        assert status in (401, 404) and is_error(body), (path, status, body)
    status, body = await server.call("GET", "/nothing")
    assert status == 404 and is_error(body)
    status, body = await server.call("GET", f"/meetings/{new_id()}/nothing", tok)
    assert status == 404 and is_error(body)


async def test_wrong_method_is_405_json(server):
    room = new_id()
    owner = await user(server, {room: "owner"}, connect=False)
    meeting = await create_meeting(owner, room)
    mid = meeting["id"]
    for method, path in [
        ("PUT", "/meetings"),
        ("PATCH", f"/meetings/{mid}"),
        ("GET", f"/meetings/{mid}/start"),
        ("DELETE", f"/meetings/{mid}/queue"),
        ("POST", f"/meetings/{mid}/media"),
        ("POST", f"/public/meetings/{mid}"),
    ]:
        status, body = await owner.call(method, path, {})
        assert status == 405 and is_error(body), (method, path, status, body)
    assert (await owner.call("GET", f"/meetings/{mid}"))[1]["active"] is False


async def test_wrong_content_type_is_still_parsed_as_json(server):
    room = new_id()
    owner = await user(server, {room: "owner"}, connect=False)
    raw = json.dumps({"name": "t", "roomId": room, "meetingType": "permanent"})
    status, body = await owner.call("POST", "/meetings", data=raw, headers={"Content-Type": "text/plain"})
    assert status == 200, body
