"""Identity (DESIGN section 2): HS256 JWTs by header, cookie, or ?access_token on /events only."""

from __future__ import annotations

import time

import aiohttp
import jwt
import pytest

from tests.helpers import SECRET, new_id

from .support import JOIN, create_meeting, is_error, started_meeting, user


def _token(claims: dict, secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def _claims(**over) -> dict:
    now = int(time.time())
    claims = {"sub": new_id(), "iat": now, "exp": now + 600}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


async def test_bearer_token_is_accepted(server):
    room = new_id()
    tok = server.token(new_id(), {room: "owner"})
    status, body = await server.call("GET", "/meetings", tok)
    assert (status, body) == (200, [])


async def test_cookie_token_is_accepted(server):
    room = new_id()
    uid = new_id()
    tok = server.token(uid, {room: "owner"})
    status, meeting = await server.call(
        "POST",
        "/meetings",
        json={"name": "c", "roomId": room, "meetingType": "permanent"},
        headers={"Cookie": f"ZM_AUTH_TOKEN={tok}"},
    )
    assert status == 200, meeting
    status, listed = await server.call("GET", "/meetings", headers={"Cookie": f"ZM_AUTH_TOKEN={tok}"})
    assert status == 200 and [m["id"] for m in listed] == [meeting["id"]]


@pytest.mark.parametrize("via", ["header", "cookie", "query"])
async def test_events_accepts_header_cookie_and_query_token(server, via):
    tok = server.token(new_id())
    ws = await server.events(tok, via=via)
    assert ws.queue_id and len(ws.queue_id) == 36


async def test_access_token_query_is_refused_outside_events(server):
    room = new_id()
    tok = server.token(new_id(), {room: "owner"})
    status, body = await server.call("GET", f"/meetings?access_token={tok}")
    assert status == 401 and is_error(body)
    status, body = await server.call(
        "POST", f"/meetings?access_token={tok}", json={"name": "x", "roomId": room, "meetingType": "permanent"}
    )
    assert status == 401 and is_error(body)
    # nothing was created
    assert await server.call("GET", "/meetings", tok) == (200, [])


async def test_missing_token_is_401_everywhere_but_public(server):
    mid = new_id()
    for method, path in [
        ("GET", "/meetings"),
        ("POST", "/meetings"),
        ("GET", f"/meetings/{mid}"),
        ("DELETE", f"/meetings/{mid}"),
        ("POST", f"/meetings/{mid}/start"),
        ("POST", f"/meetings/{mid}/join"),
        ("GET", f"/meetings/{mid}/queue"),
        ("PUT", f"/meetings/{mid}/media"),
        ("PUT", f"/meetings/{mid}/audio/offer"),
        ("POST", f"/meetings/{mid}/stopRecording"),
        ("GET", "/events"),
    ]:
        status, body = await server.call(method, path)
        assert status == 401 and is_error(body), (method, path, status, body)
    # authentication comes before syntax: a bad id without a token is still 401
    status, body = await server.call("GET", "/meetings/not-a-uuid")
    assert status == 401 and is_error(body)


async def test_events_handshake_without_valid_token_is_refused(server):
    url = server.url.replace("http", "ws", 1) + "/events"
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await server.http.ws_connect(url, headers=headers)
        assert info.value.status == 401


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: "not.a.jwt", id="garbage"),
        pytest.param(lambda: _token(_claims(exp=int(time.time()) - 120)), id="expired"),
        pytest.param(lambda: _token(_claims(), alg="none", secret=None), id="alg-none"),
        pytest.param(lambda: _token(_claims(), secret="another-secret-another-secret-1234"), id="wrong-secret"),
        pytest.param(lambda: _token(_claims(), alg="HS512"), id="hs512"),
        pytest.param(lambda: _token(_claims(exp=None)), id="missing-exp"),
        pytest.param(lambda: _token(_claims(sub=None)), id="missing-sub"),
        pytest.param(lambda: _token(_claims(sub="alice")), id="non-uuid-sub"),
        pytest.param(lambda: _token(_claims(nbf=int(time.time()) + 300)), id="nbf-future"),
        pytest.param(lambda: _token(_claims(rooms={new_id(): "admin"})), id="bad-role"),
        pytest.param(lambda: _token(_claims(rooms={"room-1": "owner"})), id="non-uuid-room"),
        pytest.param(lambda: _token(_claims(rooms=[new_id()])), id="rooms-not-object"),
        pytest.param(lambda: _token(_claims(guest="yes")), id="guest-not-bool"),
    ],
)
async def test_bad_tokens_are_401_json(server, make):
    tok = make()
    status, body = await server.call("GET", "/meetings", tok)
    assert status == 401 and is_error(body), body
    status, body = await server.call("GET", "/meetings", headers={"Cookie": f"ZM_AUTH_TOKEN={tok}"})
    assert status == 401 and is_error(body), body


async def test_authorization_header_must_be_bearer(server):
    tok = server.token(new_id())
    status, body = await server.call("GET", "/meetings", headers={"Authorization": f"Basic {tok}"})
    assert status == 401 and is_error(body)
    status, body = await server.call("GET", "/meetings", headers={"Authorization": "Bearer "})
    assert status == 401 and is_error(body)


async def test_nbf_in_the_past_and_small_clock_skew_are_accepted(server):
    now = int(time.time())
    for claims in (_claims(nbf=now - 60), _claims(nbf=now + 5), _claims(exp=now - 5)):
        status, body = await server.call("GET", "/meetings", _token(claims))
        assert status == 200, (claims, body)


async def test_grants_come_from_the_token_of_each_request(server):
    room = new_id()
    uid = new_id()
    owner_tok = server.token(uid, {room: "owner"})
    plain_tok = server.token(uid)
    status, meeting = await server.call(
        "POST", "/meetings", owner_tok, {"name": "g", "roomId": room, "meetingType": "permanent"}
    )
    assert status == 200
    # the same user without the grant is not a member: grants are never stored
    status, body = await server.call("GET", f"/meetings/{meeting['id']}", plain_tok)
    assert status == 403 and is_error(body)
    assert await server.call("GET", "/meetings", plain_tok) == (200, [])


async def test_uppercase_subject_is_the_same_user(server):
    room = new_id()
    uid = new_id()
    upper = _token(_claims(sub=uid.upper(), rooms={room.upper(): "owner"}))
    status, meeting = await server.call(
        "POST", "/meetings", upper, {"name": "u", "roomId": room, "meetingType": "permanent"}
    )
    assert status == 200 and meeting["roomId"] == room
    status, _ = await server.call("GET", f"/meetings/{meeting['id']}", server.token(uid, {room: "member"}))
    assert status == 200


async def test_join_with_another_users_queue_is_400(server):
    room = new_id()
    alice = await user(server, {room: "owner"})
    bob = await user(server, {room: "member"})
    meeting = await started_meeting(alice, room)
    mid = meeting["id"]
    for headers in (
        {"queue-id": alice.ws.queue_id},  # someone else's socket
        {"queue-id": new_id()},  # no such socket
        {"queue-id": "not-a-uuid"},
        {},  # missing
    ):
        status, body = await bob.call("POST", f"/meetings/{mid}/join", JOIN, headers=headers)
        assert status == 400 and is_error(body), (headers, body)
    # a closed socket of his own is no longer a queue
    old = await bob.connect()
    await old.close()
    status, body = await bob.join(mid, old)
    assert status == 400 and is_error(body)
    status, body = await bob.call("GET", f"/meetings/{mid}")
    assert body["participants"] == []
    await bob.ws.settle()
    assert bob.ws.of_type("MEETING_PARTICIPANT_JOINED") == []


async def test_public_meeting_needs_no_token_and_only_answers_scheduled(server):
    room1, room2 = new_id(), new_id()
    owner = await user(server, {room1: "owner", room2: "owner"}, connect=False)
    scheduled = await create_meeting(owner, room1, "scheduled", name="Weekly review")
    permanent = await create_meeting(owner, room2, "permanent", name="Team room")
    assert await server.call("GET", f"/public/meetings/{scheduled['id']}") == (200, {"name": "Weekly review"})
    status, body = await server.call("GET", f"/public/meetings/{permanent['id']}")
    assert status == 404 and is_error(body)
    status, body = await server.call("GET", f"/public/meetings/{new_id()}")
    assert status == 404 and is_error(body)
    status, body = await server.call("GET", "/public/meetings/xyz")
    assert status == 400 and is_error(body)
    # a bad token does not matter on the public route
    assert (await server.call("GET", f"/public/meetings/{scheduled['id']}", "garbage"))[0] == 200
