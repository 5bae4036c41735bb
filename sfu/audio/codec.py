"""Opus to and from 20 ms int16 mono frames at 48 kHz, through PyAV's libopus."""

from __future__ import annotations

import fractions

import av
import numpy as np

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class OpusDecoder:
    """One incoming stream's decoder; `decode` returns int16 mono samples (a read-only view of
    the decoded frame, copied by whoever keeps it) or None."""

    __slots__ = ("_codec",)

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "r")
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = SAMPLE_RATE
        self._codec = codec

    def decode(self, payload: bytes) -> np.ndarray | None:
        """Decode one Opus packet (any duration); None when it is not valid Opus."""
        try:
            frames = self._codec.decode(av.Packet(payload))
        except (av.FFmpegError, ValueError, MemoryError):
            return None
        if not frames:
            return None
        if len(frames) == 1:
            frame = frames[0]
            return np.frombuffer(frame.planes[0], dtype=np.int16, count=frame.samples)
        return np.concatenate(
            [np.frombuffer(f.planes[0], dtype=np.int16, count=f.samples) for f in frames]
        )


class OpusEncoder:
    """One outgoing mix's encoder: 20 ms of int16 mono samples in, one Opus packet out."""

    __slots__ = ("_codec", "_pts")

    def __init__(
        self, bitrate: int = 32000, complexity: int = 5, application: str = "lowdelay"
    ) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = SAMPLE_RATE
        codec.time_base = _TIME_BASE
        codec.bit_rate = bitrate
        codec.options = {"application": application, "compression_level": str(complexity)}
        codec.open()
        self._codec = codec
        self._pts = 0

    def encode(self, samples: np.ndarray) -> bytes | None:
        """Encode exactly FRAME_SAMPLES int16 samples; None if the encoder gave nothing."""
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        try:
            packets = self._codec.encode(frame)
        except (av.FFmpegError, ValueError):
            return None
        if not packets:
            return None
        return bytes(packets[0])


__all__ = ["FRAME_SAMPLES", "SAMPLE_RATE", "OpusDecoder", "OpusEncoder"]
