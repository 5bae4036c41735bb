"""Media across nodes: two users whose sockets are on different nodes publish and subscribe
through different nodes; the owner's workers answer, so the media goes straight to the owner,
and each decodes the other's frames (real aiortc peers on loopback)."""

from __future__ import annotations

import pytest

from tests.control_api.support import create_meeting, user
from tests.control_api.test_storage import fresh_database
from tests.helpers import new_id
from tests.sfu.clients import Publisher, Subscriber, assert_counters_match, bounded

from .nodes import in_process, owner_of
from .test_nodes import via


@pytest.fixture
async def two_nodes(tmp_path, postgres_server, redis_server, prefix):
    database_url = await fresh_database(postgres_server)
    a = await in_process(tmp_path, database_url, redis_server.url, prefix, "a")
    b = await in_process(tmp_path, database_url, redis_server.url, prefix, "b")
    try:
        yield a, b
    finally:
        await bounded(b.stop(), 15)
        await bounded(a.stop(), 15)


async def _publish(u, node, mid: str, pub: Publisher) -> None:
    status, body = await via(u, node).call(
        "PUT", f"/meetings/{mid}/media", {"type": "video", "enabled": True, "sdp": await pub.offer()}
    )
    assert status == 204, body
    answered = await u.ws.wait("MEETING_SDP_ANSWERED", timeout=10)
    await bounded(pub.accept(answered["sdp"]))


async def _subscribe(u, node, mid: str, to: str, sub: Subscriber) -> str:
    body = {"subscribe": [{"userId": to, "type": "video"}], "unsubscribe": []}
    status, answer = await via(u, node).call("PUT", f"/meetings/{mid}/media/subscribe", body)
    assert status == 204, answer
    offered = await u.ws.wait("MEETING_SDP_OFFERED", timeout=10)
    status, answer = await via(u, node).call(
        "PUT", f"/meetings/{mid}/media/answer", {"sdp": await bounded(sub.answer(offered["sdp"]))}
    )
    assert status == 204, answer
    subscribed = await u.ws.wait("MEETING_PARTICIPANT_SUBSCRIBED", timeout=10)
    (stream,) = subscribed["streams"]
    assert stream["userId"] == to
    return stream["mid"]


async def test_users_on_two_nodes_decode_each_others_frames(two_nodes, redis_server, prefix):
    a, b = two_nodes
    room = new_id()
    alice = await user(b, {room: "owner"})  # socket on b
    bob = await user(a, {room: "member"})  # socket on a
    mid = (await create_meeting(alice, room))["id"]
    assert (await via(alice, b).call("POST", f"/meetings/{mid}/start"))[0] == 200
    assert await owner_of(redis_server.url, prefix, mid) == "a"
    assert await via(alice, b).join(mid, alice.ws) == (200, {"status": "ACCEPTED"})
    assert await via(bob, b).join(mid, bob.ws) == (200, {"status": "ACCEPTED"})

    pubs, subs = [Publisher(), Publisher(tint=80)], [Subscriber(), Subscriber()]
    try:
        # Alice publishes through b (relayed to a), Bob through a (the owner).
        await _publish(alice, b, mid, pubs[0])
        await _publish(bob, a, mid, pubs[1])
        # Each subscribes through the node that does not hold his socket.
        alice_mid = await _subscribe(alice, a, mid, bob.id, subs[0])
        bob_mid = await _subscribe(bob, b, mid, alice.id, subs[1])
        assert_counters_match(await subs[0].wait_frames(alice_mid, 10, 20), pubs[1].track.count)
        assert_counters_match(await subs[1].wait_frames(bob_mid, 10, 20), pubs[0].track.count)
    finally:
        for pc in (*subs, *pubs):
            await pc.close()
