"""PacketRing: the recent packets of one RTP source (a producer, or one simulcast layer), kept once
for all of its consumers.

Two things read it:
- a consumer that starts while the last keyframe is still in the ring is caught up at once: the
  packets from that keyframe to the newest are replayed through its normal rewrite, so a late
  subscriber does not wait for a new keyframe (nor asks the publisher for one);
- a NACK from a subscriber: the consumer maps its outgoing sequence number back to the source's
  through its offsets and rewrites the packet again, instead of keeping a copy per consumer.

Slots are indexed by sequence number, so an upstream retransmission fills its hole; a slot is
trusted only when its packet carries the sequence number and SSRC asked for. The ring holds
references to the packets the producer already made (no copy): its memory is at most
`size` packets, and a replay is bounded by age, packet count and bytes.
"""

from __future__ import annotations

from typing import Any

from .rtp import U32

RING_SIZE = 1024  # packets per source (power of two): over 3 s of a 2.5 Mbit/s stream
LAYER_RING_SIZE = 512  # per simulcast layer
# A replay starts only from a keyframe this recent, of at most this many packets and bytes;
# beyond that the consumer waits for a new keyframe as before (a long replay would show the
# subscriber a picture seconds old, and cost its link more than the keyframe it saves).
REPLAY_MAX_AGE = 2.0  # seconds since the keyframe's first packet arrived
# A consumer caught up from a keyframe older than this also asks for a new one (throttled like
# any request, at most one per 500 ms reaches the publisher): while subscribers keep joining,
# the next ones find a recent keyframe instead of waiting for one.
REPLAY_REFRESH_AGE = 1.0
REPLAY_MAX_PACKETS = 400
REPLAY_MAX_BYTES = 480_000
# Pacing: the first REPLAY_BURST packets go at once (about one keyframe, which a subscriber gets
# as a burst from the publisher anyway), the rest REPLAY_STEP packets per REPLAY_TICK, so that a
# replay never overflows a receive buffer (a Linux UDP socket holds about 100 such packets).
REPLAY_BURST = 64
REPLAY_STEP = 24
REPLAY_TICK = 0.01  # seconds


class PacketRing:
    """The recent packets of one source (see module docstring)."""

    __slots__ = ("mask", "packets", "stamps", "descs", "key_seq", "key_ts", "key_ssrc", "key_at")

    def __init__(self, size: int = RING_SIZE) -> None:
        assert size & (size - 1) == 0, "a power of two"
        self.mask = size - 1
        self.packets: list[bytes | None] = [None] * size  # the packet as received (RTX unwrapped)
        self.stamps: list[bytes | None] = [None] * size  # the abs-send-time its consumers got
        self.descs: list[Any] = [None] * size  # simulcast VP8: the parsed descriptor (extended pid)
        self.key_seq = -1  # first packet of the last keyframe
        self.key_ts = -1
        self.key_ssrc = -1
        self.key_at = -1e9  # monotonic arrival of that packet

    def put(self, seq: int, data: bytes, abs3: bytes, desc: Any = None) -> None:
        i = seq & self.mask
        self.packets[i] = data
        self.stamps[i] = abs3
        self.descs[i] = desc

    def keyframe(self, seq: int, ts: int, ssrc: int, now: float) -> bool:
        """A packet that starts a keyframe arrived; True when it is a new keyframe. Only the
        first packet of an access unit counts: an H.264 keyframe starts at its SPS, and the IDR
        after it has the same timestamp."""
        if ssrc == self.key_ssrc and self.key_seq >= 0:
            ahead = (seq - self.key_seq) & 0xFFFF
            if ts == self.key_ts or ahead == 0 or ahead >= 0x8000:
                return False  # the same keyframe, or an older one retransmitted late
        self.key_seq = seq
        self.key_ts = ts
        self.key_ssrc = ssrc
        self.key_at = now
        return True

    def get(self, seq: int, ssrc: int) -> int:
        """The slot holding packet `seq` of `ssrc`, or -1."""
        i = seq & self.mask
        data = self.packets[i]
        if data is None or (data[2] << 8 | data[3]) != seq or U32.unpack_from(data, 8)[0] != ssrc:
            return -1
        return i

    def replayable(self, ssrc: int, newest: int, now: float) -> int:
        """The number of packets from the last keyframe of `ssrc` to `newest` (its highest
        sequence number) when a consumer may be caught up with them, else 0."""
        if self.key_ssrc != ssrc or ssrc < 0 or newest < 0 or now - self.key_at > REPLAY_MAX_AGE:
            return 0
        count = ((newest - self.key_seq) & 0xFFFF) + 1
        if count > REPLAY_MAX_PACKETS or count > self.mask + 1 or self.get(self.key_seq, ssrc) < 0:
            return 0
        octets = 0
        for k in range(count):
            i = self.get((self.key_seq + k) & 0xFFFF, ssrc)
            if i >= 0:
                octets += len(self.packets[i])  # type: ignore[arg-type]
        return count if octets <= REPLAY_MAX_BYTES else 0

    def clear(self) -> None:
        size = self.mask + 1
        self.packets = [None] * size
        self.stamps = [None] * size
        self.descs = [None] * size
        self.key_seq = self.key_ts = self.key_ssrc = -1
        self.key_at = -1e9


__all__ = [
    "LAYER_RING_SIZE",
    "PacketRing",
    "REPLAY_BURST",
    "REPLAY_MAX_AGE",
    "REPLAY_MAX_BYTES",
    "REPLAY_MAX_PACKETS",
    "REPLAY_REFRESH_AGE",
    "REPLAY_STEP",
    "REPLAY_TICK",
    "RING_SIZE",
]
