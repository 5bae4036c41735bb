"""End to end through the HTTP API and /events, as a Carbonio web client does it."""

import pytest

from tests.helpers import new_id, start_server

from .clients import Publisher, Subscriber, assert_counters_match, bounded


@pytest.fixture
async def http_server(tmp_path):
    handle = await start_server(tmp_path)  # the real media plane, ICE on 127.0.0.1
    try:
        yield handle
    finally:
        await bounded(handle.stop(), 15)


async def _join(server, token: str, meeting_id: str):
    events = await server.events(token)
    status, body = await server.call(
        "POST", f"/meetings/{meeting_id}/join", token,
        {"audioStreamEnabled": False, "videoStreamEnabled": False},
        headers={"queue-id": events.queue_id},
    )
    assert (status, body) == (200, {"status": "ACCEPTED"}), body
    return events


async def test_publish_subscribe_answer_over_http(http_server):
    server = http_server
    alice, bob, room = new_id(), new_id(), new_id()
    alice_token = server.token(alice, {room: "owner"})
    bob_token = server.token(bob, {room: "member"})
    status, meeting = await server.call(
        "POST", "/meetings", alice_token, {"name": "m", "roomId": room, "meetingType": "permanent"}
    )
    assert status == 200, meeting
    meeting_id = meeting["id"]
    status, _ = await server.call("POST", f"/meetings/{meeting_id}/start", alice_token)
    assert status == 200
    alice_events = await _join(server, alice_token, meeting_id)
    bob_events = await _join(server, bob_token, meeting_id)

    pub = Publisher()
    sub = Subscriber()
    try:
        # Alice publishes her camera.
        status, body = await server.call(
            "PUT", f"/meetings/{meeting_id}/media", alice_token,
            {"type": "video", "enabled": True, "sdp": await pub.offer()},
        )
        assert status == 204, body
        answered = await alice_events.wait("MEETING_SDP_ANSWERED")
        assert answered["mediaType"] == "VIDEO" and answered["userId"] == alice
        await bounded(pub.accept(answered["sdp"]))
        changed = await bob_events.wait(
            "MEETING_MEDIA_STREAM_CHANGED", lambda m: m.get("active") is True, timeout=10
        )
        assert (changed["userId"], changed["mediaType"]) == (alice, "VIDEO")

        # Bob subscribes, answers the server's offer, and sees the stream.
        status, body = await server.call(
            "PUT", f"/meetings/{meeting_id}/media/subscribe", bob_token,
            {"subscribe": [{"userId": alice, "type": "video"}], "unsubscribe": []},
        )
        assert status == 204, body
        offered = await bob_events.wait("MEETING_SDP_OFFERED")
        assert offered["mediaType"] == "VIDEO"
        assert f"a=msid:{alice}/video " in offered["sdp"]
        status, body = await server.call(
            "PUT", f"/meetings/{meeting_id}/media/answer", bob_token,
            {"sdp": await bounded(sub.answer(offered["sdp"]))},
        )
        assert status == 204, body
        subscribed = await bob_events.wait("MEETING_PARTICIPANT_SUBSCRIBED")
        (stream,) = subscribed["streams"]
        assert (stream["userId"], stream["type"]) == (alice, "video")
        received = await sub.wait_frames(stream["mid"], 15)
        assert_counters_match(received, pub.track.count)

        # Alice turns her camera off: Bob's m-line goes inactive in a new server offer.
        status, _ = await server.call(
            "PUT", f"/meetings/{meeting_id}/media", alice_token, {"type": "video", "enabled": False}
        )
        assert status == 204
        await bob_events.wait("MEETING_MEDIA_STREAM_CHANGED", lambda m: m.get("active") is False)
        reoffer = await bob_events.wait("MEETING_SDP_OFFERED")
        await bounded(sub.answer(reoffer["sdp"]))
        assert sub.directions()[stream["mid"]] == "inactive"
    finally:
        await sub.close()
        await pub.close()


async def test_media_through_the_base_path_with_cookie_and_queue_id(tmp_path):
    """[server] base_path: a publisher and a subscriber exchange frames through the prefixed
    calls, authenticated by the ZM_AUTH_TOKEN cookie, with a queue-id header on every call (as
    Carbonio's web client sends them)."""
    base = "/services/chats"
    server = await start_server(tmp_path, server={"base_path": base})
    pub = Publisher()
    sub = Subscriber()
    try:
        alice, bob, room = new_id(), new_id(), new_id()
        tokens = {alice: server.token(alice, {room: "owner"}), bob: server.token(bob, {room: "member"})}
        sockets = {u: await server.events(t, via="cookie", path=base + "/events") for u, t in tokens.items()}

        async def call(who: str, method: str, path: str, body=None):
            headers = {"Cookie": f"ZM_AUTH_TOKEN={tokens[who]}", "queue-id": sockets[who].queue_id}
            return await server.call(method, base + path, None, body, headers=headers)

        new = {"name": "m", "roomId": room, "meetingType": "permanent"}
        status, meeting = await call(alice, "POST", "/meetings", new)
        assert status == 200, meeting
        mid = meeting["id"]
        assert (await call(alice, "POST", f"/meetings/{mid}/start"))[0] == 200
        join = {"audioStreamEnabled": False, "videoStreamEnabled": False}
        for who in (alice, bob):
            assert await call(who, "POST", f"/meetings/{mid}/join", join) == (200, {"status": "ACCEPTED"})

        camera = {"type": "video", "enabled": True, "sdp": await pub.offer()}
        status, body = await call(alice, "PUT", f"/meetings/{mid}/media", camera)
        assert status == 204, body
        answered = await sockets[alice].wait("MEETING_SDP_ANSWERED")
        await bounded(pub.accept(answered["sdp"]))
        await sockets[bob].wait("MEETING_MEDIA_STREAM_CHANGED", lambda m: m.get("active") is True, timeout=10)
        wanted = {"subscribe": [{"userId": alice, "type": "video"}], "unsubscribe": []}
        status, body = await call(bob, "PUT", f"/meetings/{mid}/media/subscribe", wanted)
        assert status == 204, body
        offered = await sockets[bob].wait("MEETING_SDP_OFFERED")
        answer = {"sdp": await bounded(sub.answer(offered["sdp"]))}
        status, body = await call(bob, "PUT", f"/meetings/{mid}/media/answer", answer)
        assert status == 204, body
        (stream,) = (await sockets[bob].wait("MEETING_PARTICIPANT_SUBSCRIBED"))["streams"]
        received = await sub.wait_frames(stream["mid"], 15)
        assert_counters_match(received, pub.track.count)
        assert (await call(bob, "POST", f"/meetings/{mid}/leave"))[0] == 204
        assert (await call(alice, "DELETE", f"/meetings/{mid}"))[0] == 204
    finally:
        await sub.close()
        await pub.close()
        await bounded(server.stop(), 15)
