"""The mixer: per-participant inputs (RTP in, decoded 20 ms frames out), per-participant outputs
(an encoded mix in, RTP out) and the 20 ms tick that mixes and encodes.

Each tick takes at most one frame per participant. Participants whose frame is part of the mix
("in the mix": unmuted and loud enough, or talking) each get their own mix-minus encode, since
they must not hear themselves; everyone else hears the same full mix, encoded once. Everything
here is synchronous and bounded; nothing in it raises into its caller for bad input.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import numpy as np

from ..metrics import MediaStats
from ..rtp import HEADER, ntp_from_unix, payload_end, payload_offset
from .codec import FRAME_SAMPLES, SAMPLE_RATE, OpusDecoder, OpusEncoder
from .level import SILENT, TalkingDetector, audio_level_extension, level_of
from .settings import AudioSettings

log = logging.getLogger("meeting_sfu.sfu.audio")

TRIM_WINDOW_TICKS = 50  # 1 s: a frame of latency kept that long is dropped
SSRC_SWITCH_SECONDS = 0.5  # a new incoming SSRC is followed once the old one is this quiet

MixTap = Callable[[bytes, int], None]


class MixInput:
    """One participant's incoming audio: RTP filtered by payload type and SSRC, Opus decoded as it
    arrives, kept as at most `jitter_frames` frames of int16 samples (oldest dropped)."""

    __slots__ = (
        "budget",
        "budget_per_tick",
        "buf",
        "decoder",
        "dropped",
        "enabled",
        "fill",
        "header_level",
        "invalid",
        "last_arrival",
        "last_seq",
        "level_ext_id",
        "low_water",
        "packets",
        "payload_type",
        "ssrc",
        "stats",
        "window",
    )

    def __init__(self, jitter_frames: int = 4) -> None:
        self.stats: MediaStats | None = None  # the media service's counters, when attached
        self.enabled = False
        self.payload_type = -1
        self.level_ext_id = 0
        self.ssrc = -1
        self.last_seq = -1
        self.last_arrival = 0.0
        self.decoder: OpusDecoder | None = None
        self.buf = np.zeros(jitter_frames * FRAME_SAMPLES, dtype=np.int16)
        # Packets decoded per tick at most: a flood costs no more than this much decoding.
        self.budget_per_tick = jitter_frames + 2
        self.budget = self.budget_per_tick
        self.fill = 0
        self.header_level = -1  # loudest RFC 6464 level seen since the last tick, -1: none
        self.low_water = 1 << 30
        self.window = 0
        self.packets = 0
        self.dropped = 0
        self.invalid = 0

    def configure(self, payload_type: int, level_ext_id: int | None) -> None:
        """The negotiated Opus payload type and ssrc-audio-level extension id of this PC."""
        self.payload_type = payload_type
        self.level_ext_id = level_ext_id or 0

    def clear(self) -> None:
        self.fill = 0
        self.header_level = -1
        self.low_water = 1 << 30
        self.window = 0

    def on_rtp(self, data: bytes) -> None:
        """A decrypted RTP packet of the participant's audio PC (any packet: never raises)."""
        try:
            self._on_rtp(data)
        except Exception:  # noqa: BLE001 - a bad packet must never reach aiortc's loop
            self.invalid += 1

    def _on_rtp(self, data: bytes) -> None:
        if len(data) < 12 or (data[1] & 0x7F) != self.payload_type:
            return
        start = payload_offset(data)
        if start < 0:
            self.invalid += 1
            return
        end = payload_end(data)
        if end <= start:
            self.invalid += 1
            return
        ssrc = int.from_bytes(data[8:12], "big")
        seq = (data[2] << 8) | data[3]
        now = time.monotonic()
        if ssrc != self.ssrc:
            if self.ssrc >= 0 and now - self.last_arrival < SSRC_SWITCH_SECONDS:
                return  # a second stream on the same PC: only one is mixed
            self.ssrc = ssrc
            self.last_seq = -1
            self.decoder = None
        elif self.last_seq >= 0 and (seq == self.last_seq or (seq - self.last_seq) & 0x8000):
            self.dropped += 1  # late or duplicate: its time has passed
            return
        self.last_seq = seq
        self.last_arrival = now
        self.packets += 1
        if self.stats is not None:
            self.stats.rtp_packets_in["audio"] += 1
            self.stats.rtp_bytes_in["audio"] += len(data)
        if not self.enabled:
            return  # muted: not decoded at all
        if self.budget <= 0:
            self.dropped += 1
            return
        self.budget -= 1
        if self.level_ext_id:
            level = audio_level_extension(data, self.level_ext_id)
            if level >= 0 and (self.header_level < 0 or level < self.header_level):
                self.header_level = level
        if self.decoder is None:
            self.decoder = OpusDecoder()
        samples = self.decoder.decode(data[start:end])
        if samples is None:
            self.invalid += 1
            return
        self.push(samples)

    def push(self, samples: np.ndarray) -> None:
        """Append decoded samples, dropping the oldest beyond the buffer's capacity."""
        buf = self.buf
        cap = buf.shape[0]
        n = samples.shape[0]
        if n >= cap:
            buf[:] = samples[n - cap:]
            self.dropped += (self.fill + n - cap) // FRAME_SAMPLES
            self.fill = cap
            return
        fill = self.fill
        if fill + n > cap:
            drop = fill + n - cap
            buf[: fill - drop] = buf[drop:fill]
            fill -= drop
            self.dropped += max(1, drop // FRAME_SAMPLES)
        buf[fill:fill + n] = samples
        self.fill = fill + n

    def take(self) -> np.ndarray | None:
        """The next 20 ms frame (a copy), or None when less than that is buffered.

        A frame of latency that stays buffered for TRIM_WINDOW_TICKS ticks (the sender's clock
        runs faster than ours, or a burst filled the buffer) is dropped."""
        self.budget = self.budget_per_tick
        fill = self.fill
        if fill < FRAME_SAMPLES:
            self.low_water = 0
            self._window_tick()
            return None
        buf = self.buf
        frame = buf[:FRAME_SAMPLES].copy()
        rest = fill - FRAME_SAMPLES
        if rest:
            buf[:rest] = buf[FRAME_SAMPLES:fill]
        self.fill = rest
        self.low_water = min(self.low_water, rest)
        self._window_tick()
        return frame

    def _window_tick(self) -> None:
        self.window += 1
        if self.window < TRIM_WINDOW_TICKS:
            return
        if FRAME_SAMPLES <= self.low_water < (1 << 30) and self.fill >= FRAME_SAMPLES:
            rest = self.fill - FRAME_SAMPLES
            self.buf[:rest] = self.buf[FRAME_SAMPLES:self.fill]
            self.fill = rest
            self.dropped += 1
        self.window = 0
        self.low_water = 1 << 30


class MixOutput:
    """One participant's outgoing mix: RTP headers with his PC's SSRC and payload type, SRTP and
    one `sendto` per packet through a send path (see sfu.aiortc_hooks.SendPath)."""

    __slots__ = (
        "addr",
        "errors",
        "last_sent",
        "last_ts",
        "marker",
        "octets",
        "packets",
        "payload_type",
        "protect",
        "sendto",
        "seq",
        "ssrc",
        "stats",
        "ts_offset",
    )

    def __init__(
        self,
        ssrc: int,
        payload_type: int,
        protect: Callable[[bytes], bytes],
        sendto: Callable[..., None],
        addr: object,
    ) -> None:
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.seq = random.getrandbits(16)
        self.ts_offset = random.getrandbits(32)
        self.protect = protect
        self.sendto = sendto
        self.addr = addr
        self.marker = 0x80
        self.packets = 0
        self.octets = 0
        self.last_ts = 0
        self.last_sent: float | None = None
        self.errors = 0
        self.stats: MediaStats | None = None

    def send(self, payload: bytes, timestamp: int) -> None:
        ts = (self.ts_offset + timestamp) & 0xFFFFFFFF
        header = HEADER.pack(0x80, self.marker | self.payload_type, self.seq, ts, self.ssrc)
        self.marker = 0
        self.seq = (self.seq + 1) & 0xFFFF
        try:
            self.sendto(self.protect(header + payload), self.addr)
        except Exception:  # noqa: BLE001 - a closing transport; the PC state change follows
            self.errors += 1
            return
        self.packets += 1
        self.octets += len(payload)
        if self.stats is not None:
            self.stats.rtp_packets_out["audio"] += 1
            self.stats.rtp_bytes_out["audio"] += len(payload) + 12
        self.last_ts = ts
        self.last_sent = time.monotonic()

    def sender_report(self) -> tuple[int, int, int, int] | None:
        """(NTP time, RTP timestamp, packets, octets) for an RTCP sender report, now."""
        if self.last_sent is None:
            return None
        elapsed = time.monotonic() - self.last_sent
        rtp_ts = (self.last_ts + int(elapsed * SAMPLE_RATE)) & 0xFFFFFFFF
        count, octets = self.packets & 0xFFFFFFFF, self.octets & 0xFFFFFFFF
        return ntp_from_unix(time.time()), rtp_ts, count, octets


class Member:
    """A participant as the mixer sees him: input, output (once his PC is connected), his own
    mix-minus encoder (created when he first is in the mix) and his talking state."""

    __slots__ = ("detector", "encoder", "hangover", "in_mix", "input", "output", "user_id")

    def __init__(self, user_id: str, settings: AudioSettings) -> None:
        self.user_id = user_id
        self.input = MixInput(settings.jitter_frames)
        self.output: MixOutput | None = None
        self.encoder: OpusEncoder | None = None
        self.detector = TalkingDetector(
            settings.talking_level_dbov, settings.talking_packets, settings.silence_packets
        )
        self.hangover = 0
        self.in_mix = False


class Mixer:
    """Mixes the members once per `tick` (see module docstring)."""

    def __init__(self, settings: AudioSettings, on_talking: Callable[[str, bool], None]) -> None:
        self.settings = settings
        self.members: dict[str, Member] = {}
        self.on_talking = on_talking
        self.tap: MixTap | None = None
        self._full_encoder: OpusEncoder | None = None
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self.ticks = 0
        self.encodes = 0

    def new_encoder(self) -> OpusEncoder:
        s = self.settings
        return OpusEncoder(s.opus_bitrate, s.opus_complexity, s.opus_application)

    def add(self, user_id: str) -> Member:
        member = self.members.get(user_id)
        if member is None:
            member = self.members[user_id] = Member(user_id, self.settings)
        return member

    def discard(self, user_id: str) -> Member | None:
        return self.members.pop(user_id, None)

    def set_enabled(self, member: Member, enabled: bool) -> None:
        member.input.enabled = enabled
        if not enabled:
            member.input.clear()
            member.hangover = 0
            member.in_mix = False
            if member.detector.reset():
                self._talking(member.user_id, False)

    def silence(self, member: Member) -> None:
        """The member's PC is gone: nothing of his is mixed, he is no longer talking."""
        member.input.clear()
        member.input.ssrc = -1
        member.input.decoder = None
        member.output = None
        member.hangover = 0
        member.in_mix = False
        if member.detector.reset():
            self._talking(member.user_id, False)

    def _talking(self, user_id: str, talking: bool) -> None:
        try:
            self.on_talking(user_id, talking)
        except Exception:
            log.exception("talking listener failed user=%s", user_id)

    def tick(self, tick_no: int) -> None:
        """Mix, encode and send one 20 ms frame for every member; `tick_no` sets the timestamp.

        A member is "in the mix" from a loud frame (or talking) until `mix_hangover_packets`
        frames later; meanwhile he keeps his own mix-minus stream even when a frame of his is
        missing, so that his client's decoder does not hop between encoders mid-word."""
        self.ticks += 1
        timestamp = (tick_no * FRAME_SAMPLES) & 0xFFFFFFFF
        gate = self.settings.mix_gate_dbov
        hangover_ticks = self.settings.mix_hangover_packets
        own: list[tuple[Member, np.ndarray | None]] = []
        full: np.ndarray | None = None
        listeners = 0
        for member in list(self.members.values()):
            inp = member.input
            frame = None
            if inp.enabled:
                frame = inp.take()
                if frame is None:
                    level = SILENT
                else:
                    level = inp.header_level if inp.header_level >= 0 else level_of(frame)
                inp.header_level = -1
                detector = member.detector
                if detector.update(level):
                    self._talking(member.user_id, detector.talking)
                if frame is not None and (level <= gate or detector.talking):
                    member.hangover = hangover_ticks
                elif member.hangover:
                    member.hangover -= 1
                member.in_mix = member.hangover > 0 or detector.talking
            if not member.in_mix:
                if member.output is not None:
                    listeners += 1
                continue
            own.append((member, frame))
            if frame is not None:
                if full is None:
                    full = frame.astype(np.int32)
                else:
                    full += frame
        shared: bytes | None = None
        if self.tap is not None or listeners:
            if self._full_encoder is None:
                self._full_encoder = self.new_encoder()
            shared = self._full_encoder.encode(self._silence if full is None else _clip(full))
            self.encodes += 1
        for member, frame in own:
            out = member.output
            if out is None:
                continue
            if member.encoder is None:
                member.encoder = self.new_encoder()
            if full is None:
                pcm = self._silence
            elif frame is None:
                pcm = _clip(full)
            else:
                pcm = _clip(full - frame)
            payload = member.encoder.encode(pcm)
            self.encodes += 1
            if payload is not None:
                out.send(payload, timestamp)
        if shared is None:
            return
        for member in list(self.members.values()):
            out = member.output
            if out is not None and not member.in_mix:
                out.send(shared, timestamp)
        if self.tap is not None:
            try:
                self.tap(shared, timestamp)
            except Exception:
                log.exception("mix tap failed; removed")
                self.tap = None


def _clip(mix: np.ndarray) -> np.ndarray:
    """int32 sum of int16 frames -> int16, saturating (hard clip) instead of wrapping."""
    return np.clip(mix, -32768, 32767).astype(np.int16)


__all__ = ["Member", "MixInput", "MixOutput", "MixTap", "Mixer"]
