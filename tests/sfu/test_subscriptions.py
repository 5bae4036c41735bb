"""The receive PC: one m-line per stream, renegotiated in place, inactive m-lines reused."""

from control_api.meetings import media_status
from sfu.api import StreamRef

from .clients import Publisher, Subscriber, assert_counters_match, bounded
from .helpers import MEETING, live_counts, ref, subscribe


def transport_identity(sdp: str) -> set[str]:
    return {
        line for line in sdp.split("\r\n")
        if line.startswith(("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:"))
    }


async def test_subscribe_unsubscribe_resubscribe_reuses_the_mline(service, events):
    alice = Publisher(start=1000)
    carol = Publisher(start=30000)
    sub = Subscriber()
    try:
        await bounded(alice.publish(service, MEETING, "alice"))
        await bounded(carol.publish(service, MEETING, "carol"))

        streams = await subscribe(service, sub, "bob", [ref("alice")])
        (first,) = streams
        first_offer = sub.pc.remoteDescription.sdp
        await sub.wait_frames(first.mid, 10, at_least=1000)

        streams = await subscribe(service, sub, "bob", unrefs=[ref("alice")])
        assert streams == []
        assert sub.directions() == {first.mid: "inactive"}
        second_offer = sub.pc.remoteDescription.sdp

        streams = await subscribe(service, sub, "bob", [ref("carol")])
        assert [(s.user_id, s.mid) for s in streams] == [("carol", first.mid)]  # m-line reused
        assert sub.directions() == {first.mid: "sendonly"}
        assert sub.msids() == {first.mid: "carol/video"}
        third_offer = sub.pc.remoteDescription.sdp
        assert transport_identity(first_offer) == transport_identity(second_offer)
        assert transport_identity(first_offer) == transport_identity(third_offer)

        received = await sub.wait_frames(first.mid, 15, at_least=30000)
        assert_counters_match(received, carol.track.count, 30000)
        assert sub.pc.connectionState == "connected"

        # A second stream gets a second m-line on the same PC.
        streams = await subscribe(service, sub, "bob", [ref("alice")])
        assert sorted(s.user_id for s in streams) == ["alice", "carol"]
        second_mid = next(s.mid for s in streams if s.user_id == "alice")
        assert second_mid != first.mid
        assert transport_identity(sub.pc.remoteDescription.sdp) == transport_identity(first_offer)
        await sub.wait_frames(second_mid, 10, at_least=1000)
    finally:
        await sub.close()
        await alice.close()
        await carol.close()


async def test_streams_not_published_are_skipped(service, events):
    # Nothing published: no PC, no offer.
    assert await service.update_subscriptions(MEETING, "bob", [ref("nobody")], []) is None
    assert await service.update_subscriptions(MEETING, "bob", [], [ref("nobody")]) is None
    alice = Publisher()
    sub = Subscriber()
    try:
        await bounded(alice.publish(service, MEETING, "alice"))
        streams = await subscribe(service, sub, "bob", [ref("alice"), ref("alice", "screen"), ref("zed")])
        assert [(s.user_id, s.kind) for s in streams] == [("alice", "video")]
        # Subscribing again to what is already forwarded changes nothing.
        assert await service.update_subscriptions(MEETING, "bob", [ref("alice")], []) is None
        # His own stream is skipped too.
        assert await service.update_subscriptions(MEETING, "alice", [ref("alice")], []) is None
    finally:
        await sub.close()
        await alice.close()


async def test_answer_without_offer_is_refused(media, events):
    service = media
    from sfu.api import MediaError

    alice = Publisher()
    try:
        await bounded(alice.publish(service, MEETING, "alice"))
        sub = Subscriber()
        offer = await service.update_subscriptions(MEETING, "bob", [StreamRef("alice", "video")], [])
        answer = await bounded(sub.answer(offer))
        await service.answer_subscriber(MEETING, "bob", answer)
        try:
            await service.answer_subscriber(MEETING, "bob", answer)
        except MediaError as exc:
            assert media_status(exc) == 409
        else:
            raise AssertionError("a second answer was accepted")
        try:
            await service.answer_subscriber(MEETING, "nobody", answer)
        except MediaError as exc:
            assert media_status(exc) == 409
        else:
            raise AssertionError("an answer without an offer was accepted")
        assert (await live_counts(service))["consumers"] == 1
        await sub.close()
    finally:
        await alice.close()


async def test_second_change_while_an_offer_is_pending_is_reoffered_after_the_answer(service, events):
    """Two subscribe calls before the first offer is answered: the first answer is accepted,
    the second change follows as the server's own re-offer (never two offers at once)."""
    from sfu.api import SubscriberOffer

    alice = Publisher(start=1000)
    carol = Publisher(start=30000)
    sub = Subscriber()
    try:
        await bounded(alice.publish(service, MEETING, "alice"))
        await bounded(carol.publish(service, MEETING, "carol"))
        first = await bounded(service.update_subscriptions(MEETING, "bob", [ref("alice")], []))
        assert first is not None
        second = await bounded(service.update_subscriptions(MEETING, "bob", [ref("carol")], []))
        assert second is None  # deferred: an offer is waiting for its answer
        streams = await bounded(service.answer_subscriber(MEETING, "bob", await sub.answer(first)))
        assert [(s.user_id, s.kind) for s in streams] == [("alice", "video")]
        reoffer = await events.wait(SubscriberOffer, user_id="bob")
        streams = await bounded(
            service.answer_subscriber(MEETING, "bob", await sub.answer(reoffer.sdp))
        )
        assert sorted(s.user_id for s in streams) == ["alice", "carol"]
        by_user = {s.user_id: s.mid for s in streams}
        assert_counters_match(await sub.wait_frames(by_user["carol"], 10, at_least=30000),
                              carol.track.count, 30000)
        await sub.wait_frames(by_user["alice"], 10, at_least=1000)
    finally:
        await sub.close()
        await alice.close()
        await carol.close()
