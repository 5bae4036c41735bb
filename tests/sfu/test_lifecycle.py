"""Producers and consumers end in cascade: unpublish, leave, a vanished peer, meeting close."""

import asyncio

from sfu.api import PeerClosed, ProducerStateChanged, SubscriberOffer

from .clients import Publisher, Subscriber, assert_counters_match, bounded, eventually
from .helpers import MEETING, counts_become, media_stats, ref, router, subscribe


async def _watching(service, events, start: int = 0):
    pub = Publisher(start=start)
    sub = Subscriber()
    await bounded(pub.publish(service, MEETING, "alice"))
    (stream,) = await subscribe(service, sub, "bob", [ref("alice")])
    await sub.wait_frames(stream.mid, 5)
    await events.wait(ProducerStateChanged, user_id="alice", active=True)
    return pub, sub, stream


async def _inactive_reoffer(service, events, sub: Subscriber, mid: str) -> None:
    offer = await events.wait(SubscriberOffer, user_id="bob")
    answer = await bounded(sub.answer(offer.sdp))
    assert sub.directions()[mid] == "inactive"
    assert await bounded(service.answer_subscriber(MEETING, "bob", answer)) == []


async def test_unpublish_ends_the_consumers_with_an_inactive_reoffer(media, events):
    service = media
    pub, sub, stream = await _watching(service, events)
    try:
        await bounded(service.unpublish(MEETING, "alice", "video"))
        await events.wait(ProducerStateChanged, user_id="alice", active=False)
        await _inactive_reoffer(service, events, sub, stream.mid)
        await counts_become(service, consumers=0, producers=0, subscribers=1)
    finally:
        await sub.close()
        await pub.close()


async def test_publisher_leaving_mid_stream(media, events):
    service = media
    pub, sub, stream = await _watching(service, events)
    try:
        await bounded(service.remove_participant(MEETING, "alice"))
        await events.wait(ProducerStateChanged, user_id="alice", kind="video", active=False)
        await _inactive_reoffer(service, events, sub, stream.mid)
        await eventually(lambda: pub.pc.connectionState == "closed")
        assert sub.pc.connectionState == "connected"
    finally:
        await sub.close()
        await pub.close()


async def test_publisher_pc_vanishing_ends_its_producer(media, events):
    service = media
    pub, sub, stream = await _watching(service, events)
    try:
        await pub.close()
        await events.wait(PeerClosed, user_id="alice", peer="video")
        await events.wait(ProducerStateChanged, user_id="alice", active=False)
        await _inactive_reoffer(service, events, sub, stream.mid)
        await counts_become(service, producers=0)
    finally:
        await sub.close()


async def test_subscriber_vanishing_cleans_up_its_consumers(media, events):
    service = media
    pub, sub, stream = await _watching(service, events)
    try:
        await counts_become(service, consumers=1, subscribers=1)
        await sub.close()  # no leave, no unsubscribe: the client is just gone
        await events.wait(PeerClosed, user_id="bob", peer="subscriber")
        await counts_become(service, consumers=0, subscribers=0, producers=1)
        # The publisher is unaffected and a new subscriber still gets video.
        again = Subscriber()
        (s2,) = await subscribe(service, again, "bob", [ref("alice")])
        await again.wait_frames(s2.mid, 5)
        await again.close()
    finally:
        await pub.close()


async def test_meeting_close_closes_every_pc(media, events):
    service = media
    pub, sub, stream = await _watching(service, events)
    screen = Publisher()
    try:
        await bounded(screen.publish(service, MEETING, "alice", "screen"))
        await counts_become(service, producers=2, subscribers=1, meetings=1)
        await bounded(service.close_meeting(MEETING))
        await counts_become(service, producers=0, subscribers=0, consumers=0, meetings=0)
        assert sum((await media_stats(service)).peer_connections.values()) == 0
        await eventually(lambda: pub.pc.connectionState == "closed")
        await eventually(lambda: sub.pc.connectionState == "closed")
    finally:
        await sub.close()
        await pub.close()
        await screen.close()


async def test_publisher_renegotiation_is_answered_and_forwarding_continues(media, events):
    service = media
    pub, sub, stream = await _watching(service, events)
    try:
        answer = await bounded(service.publish(MEETING, "alice", "video", await pub.offer()))
        assert answer.startswith("v=0") and "a=recvonly" in answer
        await bounded(pub.accept(answer))
        before = pub.track.count
        received = await sub.wait_frames(stream.mid, 15, at_least=before)
        assert_counters_match(received, pub.track.count)
        assert len(events.of(ProducerStateChanged, user_id="alice", active=True)) == 1
        assert not events.of(SubscriberOffer)
    finally:
        await sub.close()
        await pub.close()


async def test_producer_restart_on_a_new_client_pc_keeps_the_subscriber_stream(media, events):
    service = media
    pub, sub, stream = await _watching(service, events, start=0)
    fresh = Publisher(start=40000)
    try:
        # The client replaced its PC (new ICE credentials and DTLS identity): same producer.
        await bounded(fresh.publish(service, MEETING, "alice"))
        await pub.close()
        received = await sub.wait_frames(stream.mid, 15, at_least=40000)
        assert_counters_match(received, fresh.track.count, 40000)
        assert not events.of(SubscriberOffer)
        assert not events.of(ProducerStateChanged, active=False)
        await counts_become(service, producers=1, consumers=1)
    finally:
        await sub.close()
        await fresh.close()
        await pub.close()


async def test_keyframe_requests_are_throttled_per_producer(service, events):
    pub, sub, stream = await _watching(service, events)
    try:
        producer = router(service).producers[("alice", "video")]
        consumer = router(service).subscribers["bob"].consumers[0]
        await asyncio.sleep(0.6)
        before = producer.keyframe_requests
        for _ in range(20):
            consumer.request_keyframe()
        assert producer.keyframe_requests == before + 1
        key_at = producer.ring.key_at
        await asyncio.sleep(0.7)
        # The keyframe that answered the first request serves the others: the request that was
        # deferred to the end of the window is not sent.
        assert producer.ring.key_at > key_at
        assert producer.keyframe_requests == before + 1
    finally:
        await sub.close()
        await pub.close()


async def test_the_events_a_request_caused_arrive_before_its_answer(media, events):
    """Across the worker channel too: the end of the producer is known when unpublish returns,
    as it is in process (the control plane relies on that order)."""
    service = media
    for round_ in range(3):
        pub, sub, stream = await _watching(service, events, start=round_ * 1000)
        try:
            before = len(events.of(ProducerStateChanged, user_id="alice", active=False))
            await bounded(service.unpublish(MEETING, "alice", "video"))
            await asyncio.sleep(0)
            assert len(events.of(ProducerStateChanged, user_id="alice", active=False)) == before + 1
        finally:
            await sub.close()
            await pub.close()
            await bounded(service.close_meeting(MEETING))
