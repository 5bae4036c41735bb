"""Video and screen pass-through: decoded frames at the subscribers match what was published."""

import asyncio

import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pytest

from sfu.api import ProducerStateChanged

from .clients import Publisher, Subscriber, assert_counters_match, bounded, eventually
from .helpers import MEETING, live_counts, media_stats, ref, router, subscribe

# Every test here runs on both forwarding paths (the compiled fast path and pure Python).
pytestmark = pytest.mark.usefixtures("forwarding_path")


async def test_one_publisher_three_subscribers_decode_matching_frames(media, events):
    service = media
    pub = Publisher()
    subs = [Subscriber() for _ in range(3)]
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        await events.wait(ProducerStateChanged, user_id="alice", kind="video", active=True)
        mids = []
        for i, sub in enumerate(subs):
            streams = await subscribe(service, sub, f"bob{i}", [ref("alice")])
            assert [(s.user_id, s.kind) for s in streams] == [("alice", "video")]
            mids.append(streams[0].mid)
            assert sub.msids() == {streams[0].mid: "alice/video"}
        for sub, mid in zip(subs, mids, strict=False):
            received = await sub.wait_frames(mid, 20)
            assert_counters_match(received, pub.track.count)
        stats = await media_stats(service)
        assert stats.producers["video"] == 1 and stats.consumers["video"] == 3
        assert stats.rtp_packets_out["video"] >= 3 * 20
        assert stats.peer_connections["connected"] == 4
        await service.close_meeting(MEETING)
        stats = await media_stats(service)
        assert stats.producers["video"] == 0 and stats.consumers["video"] == 0
        assert (await live_counts(service))["meetings"] == 0
    finally:
        for sub in subs:
            await sub.close()
        await pub.close()


async def test_video_and_screen_of_the_same_user(service, events):
    camera = Publisher(start=100)
    screen = Publisher(start=20000)
    sub = Subscriber()
    try:
        await bounded(camera.publish(service, MEETING, "alice", "video"))
        await bounded(screen.publish(service, MEETING, "alice", "screen"))
        streams = await subscribe(service, sub, "bob", [ref("alice", "video"), ref("alice", "screen")])
        by_kind = {s.kind: s.mid for s in streams}
        assert set(by_kind) == {"video", "screen"} and len(set(by_kind.values())) == 2
        assert sub.msids() == {by_kind["video"]: "alice/video", by_kind["screen"]: "alice/screen"}
        video = await sub.wait_frames(by_kind["video"], 15)
        shown = await sub.wait_frames(by_kind["screen"], 15)
        assert_counters_match(video, camera.track.count, 100)
        assert max(video.counters) < 20000
        assert_counters_match(shown, screen.track.count, 20000)
        await events.wait(ProducerStateChanged, user_id="alice", kind="screen", active=True)
    finally:
        await sub.close()
        await camera.close()
        await screen.close()


async def test_h264_publisher_is_forwarded_with_its_codec(service, events):
    pub = Publisher(codec="H264")
    sub = Subscriber()
    try:
        answer = await bounded(pub.publish(service, MEETING, "alice"))
        assert "H264/90000" in answer and "VP8" not in answer
        streams = await subscribe(service, sub, "bob", [ref("alice")])
        offer = sub.pc.remoteDescription.sdp
        assert "H264/90000" in offer and "packetization-mode=1" in offer and "VP8" not in offer
        received = await sub.wait_frames(streams[0].mid, 20)
        assert_counters_match(received, pub.track.count)
    finally:
        await sub.close()
        await pub.close()


async def test_subscriber_packet_loss_is_repaired_by_nack(media, events):
    service = media
    seen: set[int] = set()

    def drop(data: bytes) -> bool:
        # Drop one media packet in 15 the first time it arrives (retransmissions come as RTX).
        if data[1] & 0x7F != 97:
            return False
        seq = int.from_bytes(data[2:4], "big")
        if seq in seen:
            return False
        seen.add(seq)
        return seq % 15 == 0

    pub = Publisher()
    sub = Subscriber(drop=drop)
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        streams = await subscribe(service, sub, "bob", [ref("alice")])
        received = await sub.wait_frames(streams[0].mid, 45, timeout=15)
        assert sub.dropped > 0
        stats = await media_stats(service)
        assert stats.retransmissions > 0
        assert stats.retransmissions_refused == 0  # honest loss recovery is within the budget
        assert_counters_match(received, pub.track.count)
    finally:
        await sub.close()
        await pub.close()


async def test_no_video_decoder_or_encoder_is_created_by_the_server(service, events, monkeypatch):
    counts = {"decoders": 0, "encoders": 0}
    real_decoder = aiortc.rtcrtpreceiver.get_decoder
    real_encoder = aiortc.rtcrtpsender.get_encoder

    def counting_decoder(codec):
        counts["decoders"] += 1
        return real_decoder(codec)

    def counting_encoder(codec):
        counts["encoders"] += 1
        return real_encoder(codec)

    monkeypatch.setattr(aiortc.rtcrtpreceiver, "get_decoder", counting_decoder)
    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", counting_encoder)

    pub = Publisher()
    light = [Subscriber(decode=False) for _ in range(3)]
    viewer = Subscriber()  # the only decoder in this process: a client's
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        for i, sub in enumerate(light):
            await subscribe(service, sub, f"light{i}", [ref("alice")])
        streams = await subscribe(service, viewer, "viewer", [ref("alice")])
        await viewer.wait_frames(streams[0].mid, 30)
        await eventually(lambda: all(s.rtp_markers >= 30 for s in light))
        await asyncio.sleep(0.2)
        assert counts == {"decoders": 1, "encoders": 1}
    finally:
        for sub in [*light, viewer]:
            await sub.close()
        await pub.close()


async def test_rtcp_sender_reports_to_subscribers_and_receiver_reports_to_publishers(media):
    service = media
    pub = Publisher()
    sub = Subscriber()
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        (stream,) = await subscribe(service, sub, "bob", [ref("alice")])
        await sub.wait_frames(stream.mid, 10)
        receiver = sub.pc.getTransceivers()[0].receiver
        sender = pub.pc.getTransceivers()[0].sender

        async def reported(obj, type_: str) -> list:
            stats = await obj.getStats()
            return [s for s in stats.values() if s.type == type_]

        async def wait_reports() -> None:
            while True:
                sr = await reported(receiver, "remote-outbound-rtp")
                rr = await reported(sender, "remote-inbound-rtp")
                if sr and sr[0].packetsSent > 0 and rr:
                    return
                await asyncio.sleep(0.1)

        await bounded(wait_reports(), 5)
        sr = (await reported(receiver, "remote-outbound-rtp"))[0]
        assert 0 < sr.packetsSent <= (await media_stats(service)).rtp_packets_out["video"]
    finally:
        await sub.close()
        await pub.close()


async def test_nack_flood_from_a_subscriber_is_answered_within_a_budget(service, events):
    """A subscriber NACKing its 64 latest packets 500 times a second gets no more than about
    half its stream again (the refused rest is counted), and its stream goes on."""
    from sfu.consumer import RTX_BURST, RTX_FLOOR, RTX_SHARE

    latest = {"seq": -1, "ssrc": 0}

    def watch(data: bytes) -> bool:
        if data[1] & 0x7F == 97:  # the media payload type (not RTX)
            latest["seq"] = int.from_bytes(data[2:4], "big")
            latest["ssrc"] = int.from_bytes(data[8:12], "big")
        return False

    pub = Publisher()
    sub = Subscriber(decode=False, drop=watch)
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        await subscribe(service, sub, "bob", [ref("alice")])
        await eventually(lambda: sub.rtp_packets > 60)
        consumer = router(service).subscribers["bob"].consumers[0]
        receiver = sub.pc.getTransceivers()[0].receiver
        sent0, rtx0, frames0 = consumer.packets, consumer.retransmitted, pub.track.count
        nacks = 0
        start = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - start < 2.0:
            lost = sorted((latest["seq"] - i) & 0xFFFF for i in range(64))
            for _ in range(10):
                await receiver._send_rtcp_nack(latest["ssrc"], lost)
                nacks += 1
            await asyncio.sleep(0.02)
        elapsed = asyncio.get_running_loop().time() - start
        await asyncio.sleep(0.2)
        forwarded = consumer.packets - sent0
        resent = consumer.retransmitted - rtx0
        refused = getattr(consumer, "rtx_refused", 0)
        print(
            f"NACK flood: {nacks / elapsed:.0f} NACKs/s x 64 -> {resent / elapsed:.0f} retransmissions/s, "
            f"{refused / elapsed:.0f} refused/s; stream {forwarded / elapsed:.0f} packets/s"
        )
        assert nacks / elapsed > 200
        assert 0 < resent <= RTX_SHARE * forwarded + RTX_FLOOR * elapsed + RTX_BURST + 64
        assert refused > 10 * resent
        assert service.stats.retransmissions_refused == refused
        # The stream itself goes on: at least a packet for each frame published meanwhile.
        assert forwarded >= 0.8 * (pub.track.count - frames0)
    finally:
        await sub.close()
        await pub.close()
