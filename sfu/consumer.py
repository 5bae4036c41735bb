"""Consumer: one Producer forwarded to one subscriber m-line, RTP pass-through.

Per packet a consumer packs a new 12-byte header (its own payload type, SSRC, and sequence and
timestamp shifted by offsets that keep the subscriber's stream continuous across producer
restarts and m-line reuse), appends its header-extension block (the subscriber's MID and a fresh
abs-send-time) and the untouched payload, then SRTP-protects it and sends it with one `sendto`.

No copy is kept per consumer: the producer keeps its recent packets once (`sfu.history`). A
consumer that starts while the producer's last keyframe is still there is caught up at once by
replaying that keyframe and what followed through `forward` (paced, and held off the live
packets meanwhile); a NACK is answered by mapping the sequence number back to the producer's
through the offsets in force when it was sent (kept per start or switch, a few at most) and
rewriting that packet again, byte for byte as it was sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import fastpath
from .aiortc_hooks import SendPath
from .fastpath import StreamBase
from .history import (
    REPLAY_BURST,
    REPLAY_MAX_PACKETS,
    REPLAY_REFRESH_AGE,
    REPLAY_STEP,
    REPLAY_TICK,
    PacketRing,
)
from .rtp import HEADER, SEQ_TS, U32, ntp_from_unix, payload_offset, wrap_rtx

if TYPE_CHECKING:
    from .producer import Producer

log = logging.getLogger("meeting_sfu.sfu.consumer")

MAX_SEGMENTS = 4  # offset changes (starts, layer switches) kept for mapping NACKs back
MAX_NACKED_PER_PACKET = 64  # sequence numbers answered per NACK message
KEYFRAME_RETRY_SECONDS = 1.0  # ask again while a consumer still waits for a keyframe
# Retransmissions are paid from a token bucket filled by the stream itself: each packet
# forwarded earns RTX_SHARE of a retransmission, plus RTX_FLOOR per second for slow streams,
# up to RTX_BURST saved. Honest loss recovery (a few percent, or a lost burst) never runs dry;
# a subscriber NACKing everything gets at most about half its stream again, not 64 copies.
RTX_SHARE = 0.5
RTX_FLOOR = 10.0  # per second
RTX_BURST = 256.0


class StreamState:
    """What must survive from one consumer to the next on the same m-line (same SSRC): the
    last sequence number and timestamp sent, when, and the sender-report counters."""

    __slots__ = ("max_seq", "max_ts", "last_time", "rtx_seq", "packets", "octets")

    def __init__(self) -> None:
        self.max_seq = random.randrange(0, 32768)
        self.max_ts = random.randrange(0, 1 << 32)
        self.last_time: float | None = None
        self.rtx_seq = random.randrange(0, 32768)
        self.packets = 0
        self.octets = 0


class SendParameters:
    """What the subscriber negotiated for one m-line (known once its DTLS is up)."""

    __slots__ = ("pt", "rtx_pt", "ssrc", "rtx_ssrc", "ext_before", "ext_after", "has_abs", "path")

    def __init__(
        self,
        pt: int,
        rtx_pt: int | None,
        ssrc: int,
        rtx_ssrc: int,
        ext_before: bytes,
        ext_after: bytes,
        has_abs: bool,
        path: SendPath,
    ) -> None:
        self.pt = pt
        self.rtx_pt = rtx_pt
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.ext_before = ext_before
        self.ext_after = ext_after
        self.has_abs = has_abs
        self.path = path


class Consumer(StreamBase):
    """Forwards one producer's RTP to one subscriber m-line (see module docstring).

    The per-packet state (bound, paused, waiting_keyframe, pt, ssrc, x_bit, has_abs, ext_before,
    ext_after, src_ssrc, seq_off, ts_off, max_seq, max_ts, last_time, packets, octets)
    lives in `StreamBase` (sfu.fastpath): the compiled fast path reads and writes it too."""

    __slots__ = (
        "producer",
        "subscriber_id",
        "mid",
        "on_close",
        "closed",
        # send parameters, copied from SendParameters for the hot path
        "rtx_pt",
        "rtx_ssrc",
        "protect",
        "sendto",
        "addr",
        # rewriting state
        "rtx_seq",
        "clock_rate",
        "segments",
        "last_keyframe_request",
        # catching up from the producer's ring (sfu.history)
        "replays",
        "replay_seq",
        "replay_ssrc",
        "replay_timer",
        # counters
        "retransmitted",
        "replayed",
        "dropped",
        "rtx_refused",
        "rtx_tokens",
        "rtx_filled_at",
        "rtx_filled_packets",
    )

    def __init__(
        self,
        producer: Producer,
        subscriber_id: str,
        state: StreamState,
        on_close: Callable[[Consumer], None] | None = None,
    ) -> None:
        self.producer = producer
        self.subscriber_id = subscriber_id
        self.mid: str | None = None
        self.on_close = on_close
        self.closed = False
        self.bound = False
        self.pt = 0
        self.rtx_pt: int | None = None
        self.ssrc = 0
        self.rtx_ssrc = 0
        self.ext_before = b""
        self.ext_after = b""
        self.has_abs = False
        self.x_bit = 0
        self.protect: Callable[[bytes], bytes] | None = None
        self.sendto: Callable[..., None] | None = None
        self.addr = None
        self.paused = True  # until the subscriber answered the offer carrying this consumer
        self.waiting_keyframe = True
        self.src_ssrc = -1
        self.seq_off = 0
        self.ts_off = 0
        self.max_seq = state.max_seq
        self.max_ts = state.max_ts
        self.last_time = state.last_time
        self.rtx_seq = state.rtx_seq
        self.clock_rate = producer.clock_rate
        # (first out seq, consumer packets then, ring, source ssrc, seq_off, ts_off, pid_off,
        # tl0_off): the offsets in force from that packet on, newest last.
        self.segments: list[tuple[Any, ...]] = []
        self.last_keyframe_request = 0.0
        self.replays = True  # False: never caught up from the ring (the recorder's consumer)
        self.replay_seq = -1  # next producer sequence number to replay; -1: live
        self.replay_ssrc = -1
        self.replay_timer: asyncio.TimerHandle | None = None
        self.packets = state.packets
        self.octets = state.octets
        self.retransmitted = 0
        self.replayed = 0  # packets sent from the ring to catch up
        self.dropped = 0
        self.rtx_refused = 0  # packets asked for again but refused by the retransmission budget
        self.rtx_tokens = RTX_BURST
        self.rtx_filled_at = time.monotonic()
        self.rtx_filled_packets = self.packets

    # --- control (cold path) ----------------------------------------------------------------

    def bind(self, params: SendParameters) -> None:
        """Attach the negotiated m-line parameters and the subscriber's send path."""
        self.pt = params.pt
        self.rtx_pt = params.rtx_pt
        self.ssrc = params.ssrc
        self.rtx_ssrc = params.rtx_ssrc
        self.ext_before = params.ext_before
        self.ext_after = params.ext_after
        self.has_abs = params.has_abs
        self.x_bit = 0x10 if params.ext_before else 0
        self.protect = params.path.protect
        self.sendto = params.path.sendto
        self.addr = params.path.addr
        fastpath.attach_send(self, params.path)
        self.bound = True
        self._maybe_start()

    def resume(self) -> None:
        """The subscriber answered: forwarding may start (at the next keyframe)."""
        self.paused = False
        self._maybe_start()

    def _maybe_start(self) -> None:
        if self.bound and not self.paused and not self.closed:
            self.waiting_keyframe = True
            self.last_keyframe_request = time.monotonic()
            if not self._catch_up():
                self.producer.request_keyframe()

    # --- catching up from the producer's ring (cold path) -----------------------------------

    def _replay_source(self) -> tuple[PacketRing, int, int] | None:
        """The ring to catch up from, its SSRC and its newest sequence number (None: none)."""
        p = self.producer
        return p.ring, p.ssrc, p.max_seq

    def _catch_up(self) -> bool:
        """Start from the producer's last keyframe if it is still in the ring (True), sending
        the first REPLAY_BURST packets now and the rest paced; the live packets are held off
        until the replay reaches them."""
        if self.replay_seq >= 0:
            return True
        if not self.replays or self.src_ssrc >= 0:
            return False  # a consumer that forwarded already (bound again) never rewinds
        source = self._replay_source()
        if source is None:
            return False
        ring, ssrc, newest = source
        now = time.monotonic()
        if not ring.replayable(ssrc, newest, now):
            return False
        self.replay_seq = ring.key_seq
        self.replay_ssrc = ssrc
        self.producer.stats.keyframe_replays += 1
        self.producer.hold(self)
        self._replay_step(REPLAY_BURST)
        if now - ring.key_at > REPLAY_REFRESH_AGE and not self.closed:
            self.request_keyframe()  # for whoever joins next
        return True

    def _replay_tick(self) -> None:
        self.replay_timer = None
        self._replay_step(REPLAY_STEP)

    def _replay_step(self, limit: int) -> None:
        """Send up to `limit` packets from the ring; live again once the newest is sent."""
        if self.closed or self.replay_seq < 0:
            return
        source = self._replay_source()
        if source is None or source[1] != self.replay_ssrc:
            self._end_replay(False)  # the source changed meanwhile: wait for its keyframe
            return
        ring, ssrc, newest = source
        if ((newest - self.replay_seq) & 0xFFFF) >= REPLAY_MAX_PACKETS:
            self._end_replay(False)  # fell behind (cannot happen at these rates): give up
            return
        now = time.monotonic()
        sent = octets = 0
        for _ in range(limit):
            if ((newest - self.replay_seq) & 0xFFFF) >= 0x8000:
                break  # past the newest packet
            i = ring.get(self.replay_seq, ssrc)
            if i >= 0:
                try:
                    if self._replay_packet(ring, i, now):
                        sent += 1
                        octets += len(ring.packets[i])  # type: ignore[arg-type]
                except Exception as exc:  # a failed send must not leave the consumer held
                    log.debug("replay failed %r: %s", self, exc)
            self.replay_seq = (self.replay_seq + 1) & 0xFFFF
        self.replayed += sent
        stats = self.producer.stats
        stats.replayed_packets += sent
        stats.rtp_packets_out[self.producer.kind] += sent
        stats.rtp_bytes_out[self.producer.kind] += octets
        if ((newest - self.replay_seq) & 0xFFFF) >= 0x8000:
            self._end_replay(True)
        else:
            self.replay_timer = asyncio.get_running_loop().call_later(REPLAY_TICK, self._replay_tick)

    def _replay_packet(self, ring: PacketRing, i: int, now: float) -> bool:
        data: bytes = ring.packets[i]  # type: ignore[assignment]
        offset = payload_offset(data)
        payload = data[offset:]
        seq, ts = SEQ_TS.unpack_from(data, 2)
        keyframe = self.producer.is_keyframe(payload)
        return self.forward(data[0], data[1], seq, ts, self.replay_ssrc, payload, ring.stamps[i], keyframe, now)

    def _end_replay(self, caught_up: bool) -> None:
        self.replay_seq = -1
        if self.replay_timer is not None:
            self.replay_timer.cancel()
            self.replay_timer = None
        if not caught_up:
            self.waiting_keyframe = True
        self.producer.release(self)
        if not caught_up and not self.closed:
            self.last_keyframe_request = time.monotonic()
            self.request_keyframe()

    def _mark_segment(self, ring: PacketRing, ssrc: int, seq: int, pid_off: int = 0, tl0_off: int = 0) -> None:
        """New offsets from producer packet `seq` on (a start or a switch): kept so that a NACK
        maps back to the packet it means."""
        first = (seq + self.seq_off) & 0xFFFF
        segment = (first, self.packets, ring, ssrc, self.seq_off, self.ts_off, pid_off, tl0_off)
        self.segments = [*self.segments[-(MAX_SEGMENTS - 1):], segment]

    def save_state(self, state: StreamState) -> None:
        state.max_seq = self.max_seq
        state.max_ts = self.max_ts
        state.last_time = self.last_time
        state.rtx_seq = self.rtx_seq
        state.packets = self.packets
        state.octets = self.octets

    def close(self) -> None:
        """End forwarding; tells the owner (the subscriber's transport) through `on_close`."""
        if self.closed:
            return
        self.closed = True
        self.producer.remove_consumer(self)
        self.set_fast_send(None)
        if self.replay_timer is not None:
            self.replay_timer.cancel()
            self.replay_timer = None
        self.replay_seq = -1
        self.segments = []
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback(self)

    # --- hot path ---------------------------------------------------------------------------

    def forward(
        self,
        b0: int,
        b1: int,
        seq: int,
        ts: int,
        ssrc: int,
        payload: bytes,
        abs3: bytes,
        keyframe: bool,
        now: float,
    ) -> bool:
        """Forward one packet of the producer (already split by the producer); True if sent."""
        if ssrc != self.src_ssrc or self.waiting_keyframe:
            if self.paused or not self.bound:
                return False
            if not keyframe:
                self.dropped += 1
                if ssrc != self.src_ssrc:
                    self.waiting_keyframe = True
                if now - self.last_keyframe_request > KEYFRAME_RETRY_SECONDS:
                    self.last_keyframe_request = now
                    self.producer.request_keyframe()
                return False
            # Start or switch on a keyframe: continue the subscriber's sequence and timeline.
            self.src_ssrc = ssrc
            self.waiting_keyframe = False
            self.seq_off = (self.max_seq + 1 - seq) & 0xFFFF
            if self.last_time is None:
                gap = 0
            else:
                gap = max(1, int((now - self.last_time) * self.clock_rate))
            self.ts_off = (self.max_ts + gap - ts) & 0xFFFFFFFF
            self._mark_segment(self.producer.ring, ssrc, seq)
        oseq = (seq + self.seq_off) & 0xFFFF
        ots = (ts + self.ts_off) & 0xFFFFFFFF
        header = HEADER.pack(
            0x80 | self.x_bit | (b0 & 0x20), (b1 & 0x80) | self.pt, oseq, ots, self.ssrc
        )
        if self.has_abs:
            out = b"".join((header, self.ext_before, abs3, self.ext_after, payload))
        else:
            out = b"".join((header, self.ext_before, payload))
        self.sendto(self.protect(out), self.addr)  # type: ignore[misc]
        if ((oseq - self.max_seq) & 0xFFFF) < 0x8000:
            self.max_seq = oseq
            self.max_ts = ots
            self.last_time = now
        self.packets += 1
        self.octets += len(payload)
        return True

    # --- RTCP from the subscriber -----------------------------------------------------------

    def _segment_of(self, oseq: int) -> tuple[Any, ...] | None:
        """The offsets in force when `oseq` was sent, or None (before the first start, ahead of
        the newest packet sent)."""
        back = (self.max_seq - oseq) & 0xFFFF
        if back >= 0x8000:
            return None
        for k in range(len(self.segments) - 1, -1, -1):
            segment = self.segments[k]
            # The newest segment after half a sequence cycle covers all the past; before that,
            # a segment covers what was sent from its first packet on.
            if (k == len(self.segments) - 1 and self.packets - segment[1] >= 0x4000) or (
                (self.max_seq - segment[0]) & 0xFFFF
            ) >= back:
                return segment
        return None

    def rebuild(self, oseq: int) -> bytes | None:
        """The packet this consumer sent with sequence number `oseq`, rewritten again from the
        producer's ring; None when it is no longer there."""
        segment = self._segment_of(oseq)
        if segment is None:
            return None
        _, _, ring, ssrc, seq_off, ts_off, pid_off, tl0_off = segment
        i = ring.get((oseq - seq_off) & 0xFFFF, ssrc)
        if i < 0:
            return None
        return self._rewrite(ring, i, oseq, ts_off, pid_off, tl0_off)

    def _rewrite(self, ring: PacketRing, i: int, oseq: int, ts_off: int, pid_off: int, tl0_off: int) -> bytes:
        """What `forward` made of ring slot `i` (cold path: a retransmission)."""
        data: bytes = ring.packets[i]  # type: ignore[assignment]
        ots = (U32.unpack_from(data, 4)[0] + ts_off) & 0xFFFFFFFF
        header = HEADER.pack(0x80 | self.x_bit | (data[0] & 0x20), (data[1] & 0x80) | self.pt, oseq, ots, self.ssrc)
        payload = data[payload_offset(data):]
        if self.has_abs:
            return b"".join((header, self.ext_before, ring.stamps[i], self.ext_after, payload))  # type: ignore[arg-type]
        return b"".join((header, self.ext_before, payload))

    def retransmit(self, lost: list[int]) -> int:
        """Answer a NACK from the producer's ring (RTX-wrapped when negotiated); returns packets
        sent."""
        if not self.bound or self.closed:
            return 0
        now = time.monotonic()
        earned = (self.packets - self.rtx_filled_packets) * RTX_SHARE + (now - self.rtx_filled_at) * RTX_FLOOR
        self.rtx_tokens = min(RTX_BURST, self.rtx_tokens + earned)
        self.rtx_filled_at = now
        self.rtx_filled_packets = self.packets
        sent = 0
        for seq in lost[:MAX_NACKED_PER_PACKET]:
            packet = self.rebuild(seq)
            if packet is None:
                continue
            if self.rtx_tokens < 1.0:
                self.rtx_refused += 1
                continue
            self.rtx_tokens -= 1.0
            if self.rtx_pt is not None:
                packet = wrap_rtx(packet, self.rtx_pt, self.rtx_seq, self.rtx_ssrc)
                self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            try:
                self.sendto(self.protect(packet), self.addr)  # type: ignore[misc]
            except Exception as exc:  # a failed retransmission must not break RTCP handling
                log.debug("retransmission failed: %s", exc)
                break
            sent += 1
        self.retransmitted += sent
        return sent

    def request_keyframe(self) -> None:
        """A PLI/FIR from the subscriber."""
        if not self.closed:
            self.producer.request_keyframe()

    def sender_report(self, now_wall: float, now_mono: float) -> tuple[int, int, int, int] | None:
        """(ntp, rtp timestamp, packet count, octet count) for an RTCP SR, or None if nothing
        was sent yet. Translates the publisher's last SR through this consumer's timestamp
        offset when there is one, else maps the last sent timestamp to the local clock."""
        if self.last_time is None:
            return None
        sr = self.producer.last_sr
        if sr is not None and sr[0] == self.src_ssrc and not self.waiting_keyframe:
            _, ntp, rtp_ts, at = sr
            elapsed = now_mono - at
            ntp_out = (ntp + int(elapsed * 4294967296)) & 0xFFFFFFFFFFFFFFFF
            rtp_out = (rtp_ts + int(elapsed * self.clock_rate) + self.ts_off) & 0xFFFFFFFF
        else:
            ntp_out = ntp_from_unix(now_wall)
            elapsed = now_mono - self.last_time
            rtp_out = (self.max_ts + int(elapsed * self.clock_rate)) & 0xFFFFFFFF
        return ntp_out, rtp_out, self.packets & 0xFFFFFFFF, self.octets & 0xFFFFFFFF

    def __repr__(self) -> str:
        source = f"{self.producer.user_id}/{self.producer.kind}"
        return f"Consumer({source} -> {self.subscriber_id} mid={self.mid})"


__all__ = ["Consumer", "MAX_SEGMENTS", "SendParameters", "StreamState"]
