"""The producer's packet ring (sfu.history) on synthetic packets: where a keyframe starts, what it
may replay, that it stays bounded, and that consumers keep no copy of their own."""

import asyncio
import gc
import tracemalloc

from sfu.aiortc_hooks import SendPath
from sfu.consumer import Consumer, SendParameters, StreamState
from sfu.history import REPLAY_MAX_AGE, REPLAY_MAX_BYTES, REPLAY_MAX_PACKETS, REPLAY_REFRESH_AGE, RING_SIZE
from sfu.metrics import MediaStats
from sfu.producer import CodecChoice, Producer

from .synthetic_rtp import h264_payload, parse_out, rtp, vp8_payload

PT, SSRC = 96, 5555


def make_producer(mime: str = "video/VP8") -> Producer:
    return Producer(
        "m", "pub", "video", CodecChoice(mime, 90000, PT, 97, ()), [],
        on_active=lambda p: None, on_peer_lost=lambda p: None, stats=MediaStats(),
    )


def make_consumer(producer: Producer, out: list | None = None) -> Consumer:
    consumer = Consumer(producer, "sub", StreamState())
    consumer.bind(SendParameters(
        pt=120, rtx_pt=None, ssrc=0xABC, rtx_ssrc=0, ext_before=b"", ext_after=b"", has_abs=False,
        path=SendPath(lambda b: b, (lambda b, addr: out.append(b)) if out is not None else _discard, None),
    ))
    producer.add_consumer(consumer)
    consumer.resume()
    return consumer


def _discard(data: bytes, addr: object) -> None:
    pass


class Stream:
    """A VP8 publisher: `size`-byte packets, `per_frame` per frame, keyframes when asked."""

    def __init__(self, producer: Producer, size: int = 1100, per_frame: int = 4) -> None:
        self.producer = producer
        self.seq = 100
        self.frame = 0
        self.size = size
        self.per_frame = per_frame

    def send(self, frames: int = 1, keyframe: bool = False) -> None:
        for _ in range(frames):
            for i in range(self.per_frame):
                payload = vp8_payload(self.frame & 0x7FFF, self.frame & 0xFF, start=i == 0,
                                      keyframe=keyframe and i == 0, body=b"\x01" * self.size)
                last = i == self.per_frame - 1
                self.producer.on_rtp(rtp(PT, self.seq, self.frame * 3000, SSRC, payload, marker=last))
                self.seq = (self.seq + 1) & 0xFFFF
            self.frame += 1
            keyframe = False


async def test_an_h264_keyframe_starts_at_its_sps_and_a_consumer_starts_there():
    p = make_producer("video/H264")
    seqs = iter(range(10, 100))
    for kind, ts in (("non-idr", 0), ("stap-sps", 3000), ("fu-idr-start", 3000), ("fu-idr-middle", 3000),
                     ("non-idr", 6000)):
        p.on_rtp(rtp(PT, next(seqs), ts, SSRC, h264_payload(kind)))
    assert p.ring.key_seq == 11  # the SPS/PPS packet, not the IDR that follows it
    out: list[bytes] = []
    c = make_consumer(p, out)
    assert [parse_out(x)["payload"][:1] for x in out] == [b"\x18", b"\x7c", b"\x7c", b"\x41"]
    assert c.replayed == 4 and not c.waiting_keyframe and p.consumers == (c,)


async def test_the_ring_is_bounded_and_replays_only_a_recent_short_keyframe():
    p = make_producer()
    s = Stream(p)
    s.send(keyframe=True)
    s.send(3000)
    assert len(p.ring.packets) == RING_SIZE
    assert sum(1 for x in p.ring.packets if x is not None) == RING_SIZE
    assert p.ring.get(100, SSRC) < 0  # overwritten long ago
    # The keyframe left the ring: a new consumer waits for one and replays nothing.
    c = make_consumer(p)
    assert c.replayed == 0 and c.waiting_keyframe
    s.send(keyframe=True)
    s.send(5)
    key = p.ring.key_at
    assert p.ring.replayable(SSRC, p.max_seq, key + 0.1) == 24
    assert p.ring.replayable(SSRC, p.max_seq, key + REPLAY_MAX_AGE + 0.01) == 0  # too old
    s.send(REPLAY_MAX_PACKETS // 4)
    assert p.ring.replayable(SSRC, p.max_seq, key + 0.1) == 0  # too many packets
    big = Stream(make_producer(), size=1400, per_frame=REPLAY_MAX_BYTES // 1400 // 10 + 2)  # < 400 packets
    big.send(keyframe=True)
    big.send(9)
    assert big.producer.ring.replayable(SSRC, big.producer.max_seq, big.producer.ring.key_at) == 0  # too many bytes


async def test_a_replay_is_paced_and_holds_the_consumer_off_the_live_packets():
    p = make_producer()
    s = Stream(p)
    s.send(keyframe=True)
    s.send(39)  # 160 packets cached
    out: list[bytes] = []
    c = make_consumer(p, out)
    assert 0 < len(out) < 160 and p.catching_up == (c,) and p.consumers == ()
    s.send(2)  # live packets meanwhile: taken from the ring in order
    for _ in range(300):  # bounded: about 5 ticks are needed
        if not p.catching_up:
            break
        await asyncio.sleep(0.01)
    assert p.consumers == (c,) and c.replayed == 168
    s.send(1)
    seqs = [parse_out(x)["seq"] for x in out]
    assert seqs == [(seqs[0] + k) & 0xFFFF for k in range(172)]
    assert all(c.rebuild(parse_out(x)["seq"]) == x for x in out)


async def test_only_a_consumer_caught_up_from_an_older_keyframe_asks_for_a_fresh_one(monkeypatch):
    plis = []

    def send_pli(self, now):  # what reaches the publisher (no PC here)
        self.last_keyframe_request = now
        plis.append(now)

    monkeypatch.setattr(Producer, "_send_pli", send_pli)
    p = make_producer()
    s = Stream(p)
    s.send(keyframe=True)
    s.send(3)
    first = make_consumer(p)
    assert first.replayed == 16 and plis == []  # a recent keyframe: nothing asked
    p.ring.key_at -= REPLAY_REFRESH_AGE + 0.1
    second = make_consumer(p)
    assert second.replayed == 16 and len(plis) == 1  # caught up, and a fresh one for the next
    third = make_consumer(p)
    assert third.replayed == 16 and len(plis) == 1  # the throttle holds the next request back
    await p.close()


async def test_consumers_keep_no_copy_of_the_packets():
    """The memory of 19 more consumers on a stream whose ring is full: a few kB each, not a
    packet history (a 512-packet copy of this stream is over 500 kB)."""
    tracemalloc.start()  # from the start: the ring's packets are replaced, not added
    try:
        p = make_producer()
        s = Stream(p)
        s.send(keyframe=True)
        make_consumer(p)
        s.send(RING_SIZE // 4 + 10)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        consumers = [make_consumer(p) for _ in range(19)]
        s.send(300, keyframe=True)
        gc.collect()
        per_consumer = (tracemalloc.get_traced_memory()[0] - before) / len(consumers)
    finally:
        tracemalloc.stop()
    assert all(c.packets > 1000 for c in consumers)
    print(f"memory per extra consumer: {per_consumer:.0f} bytes")
    assert per_consumer < 16_000, per_consumer
