"""The publishers' replayed clip: a few seconds of the synthetic camera, VP8-encoded once per
client process and sent in a loop with fresh time stamps (no real-time encoder per publisher)."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack


class EncodedClip:
    """A few seconds of the synthetic camera, VP8-encoded once, to be replayed in a loop.

    A real-time encoder per publisher is most of what a publisher costs (about 0.1 core each at
    320x240); replaying frames encoded once leaves those cores to the server under test. The
    clip starts on a keyframe and has no other, so looping back to frame 0 and answering a
    keyframe request by jumping there both keep the stream decodable. Its frames carry no time
    stamp (it would be stale), so a replayed stream gives no end-to-end latency; the forwarding
    latency still works (aiortc's packetiser gives every frame a fresh picture id, so payloads
    never repeat within a run)."""

    def __init__(self, width: int, height: int, fps: int, bitrate: int, seconds: float = 3.0) -> None:
        from .clients import CameraTrack  # the live publishers' picture (clients imports this module)

        camera = CameraTrack(width, height, fps)
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.bit_rate = bitrate
        codec.framerate = fractions.Fraction(fps, 1)
        codec.time_base = fractions.Fraction(1, fps)
        count = max(2, int(seconds * fps))
        codec.gop_size = count + 1  # one keyframe: the first frame
        # Constant bitrate, as a webcam publisher's encoder runs, but a fixed speed setting and
        # one thread: the clip (hence packets per second) does not depend on how busy the
        # machine was while it was encoded (a negative cpu-used adapts to the time taken).
        codec.thread_count = 1
        codec.options = {
            "deadline": "good",
            "cpu-used": "4",
            "lag-in-frames": "0",
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
        }
        frames: list[bytes] = []
        keyframes: list[bool] = []
        # Fresh noise in a band of every frame: no motion search predicts it, so the encoder
        # spends its whole bitrate, as it does on a real camera's picture.
        rng = np.random.default_rng(1)
        band = slice(height // 2, height // 2 + height // 8)
        for n in range(count):
            luma = np.roll(camera.base, n * 4, axis=1)
            luma[band] = rng.integers(0, 256, luma[band].shape, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(np.vstack([luma, camera.uv]), format="yuv420p")
            frame.pts = n
            for packet in codec.encode(frame):
                frames.append(bytes(packet))
                keyframes.append(bool(packet.is_keyframe))
        for packet in codec.encode(None):
            frames.append(bytes(packet))
            keyframes.append(bool(packet.is_keyframe))
        if not frames or not keyframes[0]:
            raise RuntimeError("the VP8 clip does not start on a keyframe")
        self.frames = frames
        self.keyframes = [i for i, k in enumerate(keyframes) if k]
        self.fps = fps
        self.bitrate = round(sum(len(f) for f in frames) * 8 * fps / len(frames))

    _cache: dict[tuple[int, int, int, int], EncodedClip] = {}

    @classmethod
    def shared(cls, width: int, height: int, fps: int, bitrate: int) -> EncodedClip:
        """One clip per client process and format: the publishers of a process share it."""
        key = (width, height, fps, bitrate)
        if key not in cls._cache:
            cls._cache[key] = cls(width, height, fps, bitrate)
        return cls._cache[key]


class ReplayTrack(MediaStreamTrack):
    """A video track that sends an `EncodedClip`'s frames at its frame rate with fresh time
    stamps. aiortc's sender packetises them (`Vp8Encoder.pack`) and sends them as it sends
    encoded ones: same RTP, SRTP, RTX history and RTCP. `request_keyframe` (a PLI or FIR from
    the server) makes the next frame the clip's keyframe."""

    kind = "video"

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__()
        self.clip = clip
        self.frames = 0  # sent
        self.keyframes_requested = 0
        self._index = 0
        self._start: float | None = None

    def request_keyframe(self) -> None:
        self.keyframes_requested += 1
        self._index = self.clip.keyframes[0]

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        n = self.frames
        delay = self._start + n / self.clip.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(self.clip.frames[self._index])
        packet.pts = int(n * 90000 / self.clip.fps)
        packet.time_base = fractions.Fraction(1, 90000)
        self._index = (self._index + 1) % len(self.clip.frames)
        self.frames += 1
        return packet
