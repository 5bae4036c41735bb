"""A late subscriber starts from the publisher's cached keyframe, and NACKs are answered from the
producer's one packet history (sfu.history), with real aiortc peers on loopback."""

import asyncio

from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from sfu import consumer as consumer_module
from sfu.history import REPLAY_MAX_AGE

from .clients import Publisher, Subscriber, assert_counters_match, bounded, eventually
from .helpers import MEETING, ref, router, subscribe


def count_plis(pub: Publisher) -> list[int]:
    """PLIs that reach the publisher's sender (a one-element list, updated in place)."""
    sender = pub.transceiver.sender
    original = sender._handle_rtcp_packet
    seen = [0]

    async def handle(packet) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            seen[0] += 1
        await original(packet)

    sender._handle_rtcp_packet = handle
    return seen


async def test_a_late_subscriber_starts_from_the_cached_keyframe_without_asking_the_publisher(
    service, events, monkeypatch
):
    # However slow the set-up on a busy machine, no refresh request: only the age bound counts.
    monkeypatch.setattr(consumer_module, "REPLAY_REFRESH_AGE", REPLAY_MAX_AGE)
    pub = Publisher()
    first, late = Subscriber(), Subscriber()
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        plis = count_plis(pub)
        (stream,) = await subscribe(service, first, "bob", [ref("alice")])
        await first.wait_frames(stream.mid, 5)
        producer = router(service).producers[("alice", "video")]
        # A fresh keyframe, asked for by the first subscriber.
        key_at = producer.ring.key_at
        router(service).subscribers["bob"].consumers[0].request_keyframe()
        await eventually(lambda: producer.ring.key_at > key_at)
        await eventually(lambda: plis[0] >= 1)
        requests, plis_before = producer.keyframe_requests, plis[0]

        (stream,) = await subscribe(service, late, "carol", [ref("alice")])
        received = await late.wait_frames(stream.mid, 10)
        consumer = router(service).subscribers["carol"].consumers[0]
        assert consumer.replayed > 0  # it started from the ring
        # Its first frame decoded is the cached keyframe's (or one after it), in order from there.
        assert_counters_match(received, pub.track.count)
        await asyncio.sleep(0.7)  # past the throttle window: a deferred request would be out by now
        assert producer.keyframe_requests == requests
        assert plis[0] == plis_before
        assert service.stats.keyframe_replays >= 1
        # The m-line's idle aiortc receiver keeps no bitrate estimator (memory per subscriber).
        idle = router(service).subscribers["carol"].slots[0].transceiver.receiver
        assert idle._RTCRtpReceiver__remote_bitrate_estimator is None
    finally:
        await first.close()
        await late.close()
        await pub.close()


async def test_nack_is_answered_from_the_producer_ring_with_the_bytes_sent(service, events):
    """RTX-wrapped retransmissions unwrap to exactly the packets first received (the replayed
    start included); once the ring no longer has them, nothing is resent."""
    packets: list[bytes] = []

    def watch(data: bytes) -> bool:
        packets.append(data)
        return False

    def split(media_pt: int, rtx_pt: int, ssrc: int) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Media packets by sequence number (first arrival), RTX ones unwrapped by their OSN."""
        sent: dict[int, bytes] = {}
        resent: dict[int, bytes] = {}
        for data in packets:
            pt = data[1] & 0x7F
            if pt == media_pt:
                sent.setdefault(int.from_bytes(data[2:4], "big"), data)
            elif pt == rtx_pt:
                size = 16 + int.from_bytes(data[14:16], "big") * 4 if data[0] & 0x10 else 12
                original = bytearray(data[:size]) + data[size + 2:]
                original[1] = (data[1] & 0x80) | media_pt
                original[2:4] = data[size:size + 2]
                original[8:12] = ssrc.to_bytes(4, "big")
                resent[int.from_bytes(data[size:size + 2], "big")] = bytes(original)
        return sent, resent

    pub = Publisher()
    sub = Subscriber(drop=watch)
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        await subscribe(service, sub, "bob", [ref("alice")])
        consumer = router(service).subscribers["bob"].consumers[0]
        await eventually(lambda: consumer.packets > 60)
        assert consumer.rtx_pt is not None
        ids = (consumer.pt, consumer.rtx_pt, consumer.ssrc)
        sent, _ = split(*ids)
        seqs = sorted(sent)
        lost = seqs[:3] + seqs[-10:-5]  # the replayed start, and live packets
        receiver = sub.pc.getTransceivers()[0].receiver
        await receiver._send_rtcp_nack(consumer.ssrc, lost)
        await eventually(lambda: all(s in split(*ids)[1] for s in lost), timeout=5)
        sent, resent = split(*ids)
        for s in lost:
            assert resent[s] == sent[s], s
        assert not hasattr(consumer, "history")  # no copy per consumer

        producer = router(service).producers[("alice", "video")]
        producer.ring.clear()
        rtx = sum(1 for data in packets if data[1] & 0x7F == consumer.rtx_pt)
        before, count = consumer.retransmitted, len(packets)
        await receiver._send_rtcp_nack(consumer.ssrc, lost)
        await asyncio.sleep(0.3)
        assert consumer.retransmitted == before
        assert sum(1 for data in packets if data[1] & 0x7F == consumer.rtx_pt) == rtx
        assert len(packets) > count  # the stream went on
    finally:
        await sub.close()
        await pub.close()
