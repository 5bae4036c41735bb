"""No input crashes a router: bad SDP and impossible requests are 4xx MediaErrors or no-ops."""

import pytest

from control_api.meetings import media_status
from sfu import aiortc_hooks
from sfu.api import MediaError, StreamRef

from .clients import Publisher, Subscriber, bounded, client_pc
from .helpers import MEETING, ref, subscribe


async def _audio_only_offer() -> str:
    pc = client_pc()
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def _vp8_offer() -> tuple[Publisher, str]:
    pub = Publisher()
    return pub, await pub.offer()


async def _expect(status: int, coro) -> MediaError:
    with pytest.raises(MediaError) as info:
        await bounded(coro)
    assert media_status(info.value) == status, (media_status(info.value), info.value.message)
    return info.value


@pytest.mark.parametrize(
    "sdp",
    ["", "hello", "v=0\r\nm=video", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video x y z\r\n", "\x00" * 50],
)
async def test_garbage_sdp_is_a_400(service, sdp):
    await _expect(400, service.publish(MEETING, "alice", "video", sdp))


async def test_offer_without_video_is_a_400(service):
    await _expect(400, service.publish(MEETING, "alice", "video", await _audio_only_offer()))


async def test_offer_with_only_unsupported_codecs_is_a_400(service):
    pub, sdp = await _vp8_offer()
    await pub.close()
    vp9 = sdp.replace("VP8/90000", "VP9/90000")
    error = await _expect(400, service.publish(MEETING, "alice", "video", vp9))
    assert error.code == "unsupported_codec"


async def test_a_recvonly_video_offer_is_not_a_publication(service):
    pc = client_pc()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        await _expect(400, service.publish(MEETING, "alice", "video", pc.localDescription.sdp))
    finally:
        await pc.close()


async def test_unknown_stream_type_is_a_400(service):
    pub, sdp = await _vp8_offer()
    await pub.close()
    await _expect(400, service.publish(MEETING, "alice", "camera", sdp))  # type: ignore[arg-type]
    await _expect(400, service.update_subscriptions(MEETING, "bob", [StreamRef("alice", "audio")], []))  # type: ignore[arg-type]


async def test_garbage_answer_is_a_400_and_the_router_keeps_working(service):
    pub = Publisher()
    sub = Subscriber()
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        offer = await bounded(service.update_subscriptions(MEETING, "bob", [ref("alice")], []))
        await _expect(400, service.answer_subscriber(MEETING, "bob", "garbage"))
        # An offer in place of an answer does not match the server's offer either.
        _, other = await _vp8_offer()
        await _expect(400, service.answer_subscriber(MEETING, "bob", other))
        # The pending offer can still be answered after the bad attempts.
        streams = await bounded(service.answer_subscriber(MEETING, "bob", await sub.answer(offer)))
        await sub.wait_frames(streams[0].mid, 5)
        # ... and the PC renegotiates normally afterwards.
        assert await subscribe(service, sub, "bob", unrefs=[ref("alice")]) == []
    finally:
        await sub.close()
        await pub.close()


async def test_unpublish_and_remove_of_unknown_things_are_no_ops(service):
    await bounded(service.unpublish(MEETING, "nobody", "video"))
    await bounded(service.remove_participant(MEETING, "nobody"))
    await bounded(service.close_meeting("never-opened"))
    await bounded(service.open_meeting(MEETING))
    await bounded(service.close_meeting(MEETING))
    await bounded(service.close_meeting(MEETING))


def test_private_api_check_names_what_is_missing(monkeypatch):
    aiortc_hooks.check_private_api()
    from aiortc import RTCDtlsTransport

    monkeypatch.delattr(RTCDtlsTransport, "_handle_rtp_data")
    with pytest.raises(RuntimeError, match="_handle_rtp_data"):
        aiortc_hooks.check_private_api()
