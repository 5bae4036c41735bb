"""Real encoded media as RTP packets, made with aiortc's own encoders (test side only)."""

from __future__ import annotations

import fractions
import struct

import av
import numpy as np
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder


def video_frame(i: int, width: int = 320, height: int = 240) -> av.VideoFrame:
    img = np.zeros((height, width, 3), np.uint8)
    img[:, :, 0] = (i * 7) % 256
    img[: height // 2, : width // 2, 1] = 255
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    frame.pts = i * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def rtp(payload: bytes, seq: int, ts: int, marker: bool, pt: int = 96, ssrc: int = 1234) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


class VideoSource:
    """Encodes frames with VP8 or H.264 and yields RTP packets per frame."""

    def __init__(self, codec: str = "vp8", ssrc: int = 1234) -> None:
        self.encoder = Vp8Encoder() if codec == "vp8" else H264Encoder()
        self.seq = 1000
        self.ssrc = ssrc
        self.index = 0

    def next_frame(self, force_keyframe: bool = False) -> list[bytes]:
        payloads, ts = self.encoder.encode(video_frame(self.index), force_keyframe=force_keyframe)
        self.index += 1
        out = []
        for n, p in enumerate(payloads):
            out.append(rtp(p, self.seq, ts, n == len(payloads) - 1, ssrc=self.ssrc))
            self.seq += 1
        return out


class OpusSource:
    def __init__(self, freq: float = 440.0) -> None:
        self.encoder = OpusEncoder()
        self.freq = freq
        self.index = 0

    def next_packet(self) -> tuple[bytes, int]:
        t = (np.arange(960) + self.index * 960) / 48000
        tone = (np.sin(2 * np.pi * self.freq * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = self.index * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.index += 1
        payloads, ts = self.encoder.encode(frame)
        return payloads[0], ts
