"""Real aiortc client peers for the SFU tests: a publisher sending a synthetic video whose frame
counter is drawn as big luma blocks, and subscribers that answer server offers and read the
counter back from the decoded frames (or, light, only count RTP at their DTLS transport)."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

from sfu import aiortc_hooks

WIDTH, HEIGHT = 320, 240
BITS = 16
COLS = 8
BLOCK_W, BLOCK_H = WIDTH // COLS, 60


def draw_counter(counter: int, tint: int = 0) -> av.VideoFrame:
    """A yuv420p frame whose top rows encode `counter` as 16 black/white blocks."""
    y = np.full((HEIGHT, WIDTH), 128, dtype=np.uint8)
    for bit in range(BITS):
        row, col = divmod(bit, COLS)
        value = 235 if counter >> bit & 1 else 16
        y[row * BLOCK_H:(row + 1) * BLOCK_H, col * BLOCK_W:(col + 1) * BLOCK_W] = value
    y[2 * BLOCK_H:, :] = 60 + tint
    uv = np.full((HEIGHT // 2, WIDTH), 128, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(np.vstack([y, uv]), format="yuv420p")
    return frame


def read_counter(frame: av.VideoFrame) -> int:
    y = frame.to_ndarray(format="yuv420p")[:HEIGHT]
    if y.shape[1] != WIDTH:
        return -1
    counter = 0
    for bit in range(BITS):
        row, col = divmod(bit, COLS)
        block = y[row * BLOCK_H + 10:(row + 1) * BLOCK_H - 10, col * BLOCK_W + 10:(col + 1) * BLOCK_W - 10]
        if block.mean() > 128:
            counter |= 1 << bit
    return counter


class CounterTrack(VideoStreamTrack):
    """30 fps synthetic video; frame n shows n (modulo 2**16) in luma blocks."""

    def __init__(self, fps: int = 30, tint: int = 0, start: int = 0) -> None:
        super().__init__()
        self.fps = fps
        self.first = start
        self.count = start
        self.tint = tint
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        n = self.count
        target = self._start + (n - self.first) / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = draw_counter(n & 0xFFFF, self.tint)
        frame.pts = int(n * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


def client_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class Publisher:
    """A client's sendonly video PC."""

    def __init__(self, codec: str = "VP8", fps: int = 30, tint: int = 0, start: int = 0) -> None:
        self.pc = client_pc()
        self.track = CounterTrack(fps, tint, start)
        self.transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
        prefs = [
            c
            for c in RTCRtpSender.getCapabilities("video").codecs
            if c.mimeType.lower() in (f"video/{codec.lower()}", "video/rtx")
        ]
        self.transceiver.setCodecPreferences(prefs)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def publish(self, service: Any, meeting: str, user: str, kind: str = "video") -> str:
        answer = await service.publish(meeting, user, kind, await self.offer())
        await self.accept(answer)
        return answer

    async def close(self) -> None:
        await self.pc.close()


@dataclass
class Received:
    """What a subscriber got on one track."""

    msid: str = ""
    counters: list[int] = field(default_factory=list)
    frames: int = 0
    errors: int = 0


class Subscriber:
    """A client's receive PC: answers the server's offers; decodes (or only counts) video."""

    def __init__(self, *, decode: bool = True, drop: Callable[[bytes], bool] | None = None) -> None:
        self.pc: RTCPeerConnection | None = None
        self.decode = decode
        self.drop = drop
        self.tracks: dict[str, Received] = {}  # by track id (= mid from the msid)
        self.rtp_packets = 0
        self.rtp_markers = 0
        self.dropped = 0
        self._readers: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    async def answer(self, offer_sdp: str) -> str:
        if self.pc is None:
            self.pc = client_pc()
            self.pc.on("track", self._on_track)
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        self._install_hooks()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    def _install_hooks(self) -> None:
        assert self.pc is not None
        for t in self.pc.getTransceivers():
            if not self.decode:
                aiortc_hooks.disable_reassembly(t.receiver)
            dtls = t.receiver.transport
            if getattr(dtls, "_test_hooked", False):
                continue
            dtls._test_hooked = True
            original = dtls._handle_rtp_data

            async def handle(data: bytes, arrival_time_ms: int, original=original) -> None:
                if self.drop is not None and self.drop(data):
                    self.dropped += 1
                    return
                self.rtp_packets += 1
                if data[1] & 0x80:
                    self.rtp_markers += 1
                await original(data, arrival_time_ms)

            dtls._handle_rtp_data = handle

    def _on_track(self, track: Any) -> None:
        received = self.tracks.setdefault(track.id, Received())
        if self.decode:
            self._readers.append(asyncio.ensure_future(self._read(track, received)))

    async def _read(self, track: Any, received: Received) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            received.frames += 1
            received.counters.append(read_counter(frame))
            self._changed.set()

    def _sections(self) -> list[list[str]]:
        assert self.pc is not None
        sections: list[list[str]] = []
        for line in self.pc.remoteDescription.sdp.split("\r\n"):
            if line.startswith("m="):
                sections.append([])
            if sections:
                sections[-1].append(line)
        return sections

    @staticmethod
    def _mid(section: list[str]) -> str:
        return next(line[6:] for line in section if line.startswith("a=mid:"))

    def msids(self) -> dict[str, str]:
        """mid -> msid stream id of each sending m-line of the last server offer."""
        out = {}
        for section in self._sections():
            if "a=sendonly" not in section:
                continue
            mid = self._mid(section)
            for line in section:
                if line.startswith("a=msid:"):
                    stream, track = line[7:].split(" ")
                    assert track == mid, (track, mid)
                    out[mid] = stream
        return out

    def directions(self) -> dict[str, str]:
        """mid -> direction of each m-line of the last server offer."""
        out = {}
        for section in self._sections():
            for line in section:
                if line in ("a=sendonly", "a=inactive", "a=recvonly", "a=sendrecv"):
                    out[self._mid(section)] = line[2:]
        return out

    async def wait_frames(
        self, track_id: str, count: int, timeout: float = 10.0, at_least: int = 0
    ) -> Received:
        """Wait until `count` frames showing a counter >= `at_least` were decoded."""

        async def loop() -> Received:
            while True:
                received = self.tracks.get(track_id)
                if received is not None and sum(1 for c in received.counters if c >= at_least) >= count:
                    return received
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> None:
    """Wait until `predicate()` is true, bounded in time."""

    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(step)

    await asyncio.wait_for(loop(), timeout)


async def bounded(awaitable: Awaitable[Any], timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


def assert_counters_match(received: Received, sent_max: int, sent_min: int = 0) -> None:
    """Decoded counters are frames the publisher sent, in order, mostly consecutive."""
    counters = [c for c in received.counters if c >= 0 and c >= sent_min]
    assert counters, "no frame decoded"
    assert all(sent_min <= c <= sent_max for c in counters), (counters[:10], sent_max)
    assert counters == sorted(counters), counters[:50]
    steps = [b - a for a, b in zip(counters, counters[1:], strict=False)]
    assert sum(1 for s in steps if s == 1) >= len(steps) * 0.8, steps[:50]
