"""Consumer: one Producer forwarded to one subscriber m-line, RTP pass-through.

Per packet a consumer packs a new 12-byte header (its own payload type, SSRC, and sequence and
timestamp shifted by offsets that keep the subscriber's stream continuous across producer
restarts and m-line reuse), appends its header-extension block (the subscriber's MID and a fresh
abs-send-time) and the untouched payload, keeps the result in a bounded history for NACKs, then
SRTP-protects it and sends it with one `sendto`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import fastpath
from .aiortc_hooks import SendPath
from .fastpath import StreamBase
from .rtp import HEADER, U16, wrap_rtx

if TYPE_CHECKING:
    from .producer import Producer

log = logging.getLogger("meeting_sfu.sfu.consumer")

HISTORY_SIZE = 512  # packets kept per consumer for retransmission (power of two)
_HISTORY_MASK = HISTORY_SIZE - 1
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
    ext_after, src_ssrc, seq_off, ts_off, max_seq, max_ts, last_time, history, packets, octets)
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
        "last_keyframe_request",
        # counters
        "retransmitted",
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
        self.history: list[bytes | None] = [None] * HISTORY_SIZE
        self.last_keyframe_request = 0.0
        self.packets = state.packets
        self.octets = state.octets
        self.retransmitted = 0
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
            self.producer.request_keyframe()

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
        self.history = []
        self.set_fast_send(None)
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
        oseq = (seq + self.seq_off) & 0xFFFF
        ots = (ts + self.ts_off) & 0xFFFFFFFF
        header = HEADER.pack(
            0x80 | self.x_bit | (b0 & 0x20), (b1 & 0x80) | self.pt, oseq, ots, self.ssrc
        )
        if self.has_abs:
            out = b"".join((header, self.ext_before, abs3, self.ext_after, payload))
        else:
            out = b"".join((header, self.ext_before, payload))
        self.history[oseq & _HISTORY_MASK] = out
        self.sendto(self.protect(out), self.addr)  # type: ignore[misc]
        if ((oseq - self.max_seq) & 0xFFFF) < 0x8000:
            self.max_seq = oseq
            self.max_ts = ots
            self.last_time = now
        self.packets += 1
        self.octets += len(payload)
        return True

    # --- RTCP from the subscriber -----------------------------------------------------------

    def retransmit(self, lost: list[int]) -> int:
        """Answer a NACK from the history (RTX-wrapped when negotiated); returns packets sent."""
        if not self.bound or self.closed:
            return 0
        now = time.monotonic()
        earned = (self.packets - self.rtx_filled_packets) * RTX_SHARE + (now - self.rtx_filled_at) * RTX_FLOOR
        self.rtx_tokens = min(RTX_BURST, self.rtx_tokens + earned)
        self.rtx_filled_at = now
        self.rtx_filled_packets = self.packets
        sent = 0
        for seq in lost[:MAX_NACKED_PER_PACKET]:
            packet = self.history[seq & _HISTORY_MASK]
            if packet is None or U16.unpack_from(packet, 2)[0] != seq:
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
        from .rtp import ntp_from_unix

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


__all__ = ["Consumer", "HISTORY_SIZE", "SendParameters", "StreamState"]
