"""Video pass-through: one publisher, several subscribers, decoded frames match."""

import asyncio

from sfu.api import ProducerStateChanged, StreamRef

from .clients import Publisher, Subscriber, assert_counters_match, bounded

MEETING = "m-1"


async def subscribe(service, sub: Subscriber, user: str, refs, unrefs=()):
    offer = await bounded(service.update_subscriptions(MEETING, user, list(refs), list(unrefs)))
    assert offer is not None
    answer = await bounded(sub.answer(offer))
    return await bounded(service.answer_subscriber(MEETING, user, answer))


async def test_one_publisher_three_subscribers_decode_matching_frames(service, events):
    pub = Publisher()
    subs = [Subscriber() for _ in range(3)]
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        await events.wait(ProducerStateChanged, user_id="alice", active=True)
        for i, sub in enumerate(subs):
            streams = await subscribe(service, sub, f"bob{i}", [StreamRef("alice", "video")])
            assert [(s.user_id, s.kind) for s in streams] == [("alice", "video")]
            mid = streams[0].mid
            assert sub.msids() == {mid: "alice/video"}
        for sub in subs:
            received = await sub.wait_frames(streams[0].mid, 20)
            assert_counters_match(received, pub.track.count)
    finally:
        for sub in subs:
            await sub.close()
        await pub.close()
