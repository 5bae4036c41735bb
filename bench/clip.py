"""The publishers' replayed clip: a few seconds of the synthetic camera, VP8-encoded once per
client process and sent in a loop with fresh time stamps (no real-time encoder per publisher)."""

from __future__ import annotations

import asyncio
import fractions
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from sfu import aiortc_hooks


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
        self.chunks: dict[int, list[bytes]] = {}  # frame -> its RTP payloads without descriptor
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

    async def next_frame(self) -> tuple[int, int]:
        """At the next frame's time: (its index in the clip, its 90 kHz time stamp)."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        n = self.frames
        delay = self._start + n / self.clip.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        index = self._index
        self._index = (index + 1) % len(self.clip.frames)
        self.frames += 1
        return index, int(n * 90000 / self.clip.fps)

    async def recv(self) -> av.Packet:
        index, pts = await self.next_frame()
        packet = av.Packet(self.clip.frames[index])
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, 90000)
        return packet


def vp8_payloads(clip: EncodedClip, index: int, picture_id: int) -> list[bytes]:
    """The RTP payloads of clip frame `index` with `picture_id`, as aiortc's VP8 packetiser
    makes them; each frame is split once per clip (only the descriptor's picture id changes)."""
    from aiortc.codecs.vpx import Vp8Encoder

    if picture_id < 128:  # a one-byte picture id (128 frames in 32768): another split
        return Vp8Encoder._packetize(clip.frames[index], picture_id)
    chunks = clip.chunks.get(index)
    if chunks is None:
        chunks = clip.chunks[index] = [p[4:] for p in Vp8Encoder._packetize(clip.frames[index], 128)]
    pid = bytes((0x80 | picture_id >> 8, picture_id & 0xFF))
    first = b"\x90\x80" + pid  # X, S (start of partition 0), then I and the 15-bit picture id
    rest = b"\x80\x80" + pid
    return [first + chunks[0]] + [rest + c for c in chunks[1:]]


ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
HISTORY = 512  # packets kept for retransmission (about 8 s of a 600 kbit/s stream)


class ReplaySender:
    """Sends a `ReplayTrack`'s frames as RTP itself, on the publisher's own SRTP session and ICE
    socket, while aiortc's sender of the m-line stays idle (an `IdleTrack`) and keeps the SDP,
    SSRCs and RTCP: about a tenth of the CPU of aiortc's packet-by-packet send loop, with what a
    browser's packets carry (aiortc's VP8 payloads with fresh picture ids; MID and
    abs-send-time; RTX answers to NACKs; sender reports with the real counts and clocks).

    `on_frame(payload)` is called with the last payload of every frame (the forwarding latency's
    key); `start(parameters)` is given aiortc's send parameters once its sender starts."""

    def __init__(self, track: ReplayTrack, ssrc: int, rtx_ssrc: int, on_frame: Callable[[bytes], None]) -> None:
        self.track = track
        self.sender: Any = None
        self.on_frame = on_frame
        self.picture_id = random.getrandbits(15)
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.seq = random.getrandbits(16)
        self.rtx_seq = random.getrandbits(16)
        self.origin = random.getrandbits(32)
        self.packets = self.octets = 0
        self.retransmitted = 0
        self.last: tuple[float, int] | None = None  # (time.time(), RTP timestamp) of the last frame
        self.history: dict[int, tuple[int, int, bytes]] = {}  # seq % HISTORY -> (seq, timestamp, payload)
        self.pt = self.rtx_pt = 0
        self.head = self.tail = b""
        self.abs = False
        self._task: asyncio.Task[None] | None = None

    def install(self, sender: Any) -> None:
        """On the idle aiortc sender, before its remote description: start, RTCP, reports."""
        self.sender = sender
        aiortc_hooks.hook_sender_start(sender, self.start)
        aiortc_hooks.hook_sender_rtcp(sender, self.on_rtcp)
        aiortc_hooks.hook_sender_reports(sender, self.fill_report)

    def configure(self, parameters: Any) -> None:
        """Payload types and header extensions from aiortc's negotiated send parameters."""
        from sfu.rtp import extension_block

        video = [c for c in parameters.codecs if c.mimeType.lower() == "video/vp8"]
        rtx = [c for c in parameters.codecs if c.mimeType.lower() == "video/rtx"]
        self.pt = video[0].payloadType
        self.rtx_pt = rtx[0].payloadType if rtx else 0
        ids = {e.uri: e.id for e in parameters.headerExtensions}
        self.head, self.tail = extension_block(ids.get(MID), parameters.muxId, ids.get(ABS_SEND_TIME))
        self.abs = 1 <= ids.get(ABS_SEND_TIME, 0) <= 14

    def start(self, parameters: Any) -> None:
        self.configure(parameters)
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _packet(self, pt: int, seq: int, timestamp: int, ssrc: int, marker: bool, payload: bytes) -> bytes:
        ext = self.head
        if ext:  # abs-send-time: 6.18 fixed-point seconds, as aiortc and browsers send it
            abs3 = (int(time.time() * 262144) & 0xFFFFFF).to_bytes(3, "big") if self.abs else b""
            ext = self.head + abs3 + self.tail
        first = 0x90 if ext else 0x80
        return struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq, timestamp, ssrc) + ext + payload

    def frame_packets(self, index: int, ts: int) -> list[bytes]:
        """The clear RTP packets of clip frame `index` at 90 kHz time `ts` (kept for NACKs)."""
        payloads = vp8_payloads(self.track.clip, index, self.picture_id)
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        timestamp = (self.origin + ts) & 0xFFFFFFFF
        last = len(payloads) - 1
        out = []
        for i, payload in enumerate(payloads):
            seq = self.seq
            self.seq = (seq + 1) & 0xFFFF
            self.history[seq % HISTORY] = (seq, timestamp, payload)
            out.append(self._packet(self.pt, seq, timestamp, self.ssrc, i == last, payload))
            self.packets += 1
            self.octets += len(payload)
        self.last = (time.time(), timestamp)
        if payloads:
            self.on_frame(payloads[-1])
        return out

    def retransmit(self, lost: list[int]) -> list[bytes]:
        """The clear packets that answer a NACK: RTX (RFC 4588) when negotiated, else the packets
        again; sequence numbers no longer in the history are skipped."""
        out = []
        for seq in lost:
            kept = self.history.get(seq % HISTORY)
            if kept is None or kept[0] != seq:
                continue
            _, timestamp, payload = kept
            if self.rtx_pt:
                rtx, self.rtx_seq = self.rtx_seq, (self.rtx_seq + 1) & 0xFFFF
                original = struct.pack("!H", seq) + payload  # the original sequence number first
                out.append(self._packet(self.rtx_pt, rtx, timestamp, self.rtx_ssrc, False, original))
            else:
                out.append(self._packet(self.pt, seq, timestamp, self.ssrc, False, payload))
        self.retransmitted += len(out)
        return out

    async def _run(self) -> None:
        path = None
        for _ in range(1000):  # bounded: the DTLS transport is connected when aiortc starts the sender
            path = aiortc_hooks.send_path(self.sender.transport)
            if path is not None:
                break
            await asyncio.sleep(0.02)
        if path is None:
            return
        protect, sendto, addr = path.protect, path.sendto, path.addr
        while True:
            try:
                index, ts = await self.track.next_frame()
            except MediaStreamError:
                return
            for data in self.frame_packets(index, ts):
                try:
                    sendto(protect(data), addr)
                except OSError:
                    pass  # as aioice does: a send error is a lost packet

    def on_rtcp(self, packet: Any) -> bool:
        """NACKs are answered here; the rest goes to aiortc's sender (PLI/FIR: the keyframe)."""
        from aiortc.rtp import RtcpRtpfbPacket

        if not (isinstance(packet, RtcpRtpfbPacket) and packet.fmt == 1):
            return False
        path = aiortc_hooks.send_path(self.sender.transport)
        if path is not None:
            for data in self.retransmit(list(packet.lost)):
                try:
                    path.sendto(path.protect(data), path.addr)
                except OSError:
                    pass
        return True

    def fill_report(self, packets: list[Any]) -> None:
        """The idle sender's sender report, with what was really sent."""
        from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

        from sfu.rtp import ntp_from_unix

        if not packets or not isinstance(packets[0], RtcpSrPacket) or self.last is None:
            return
        now = time.time()
        at, timestamp = self.last
        packets[0].sender_info = RtcpSenderInfo(
            ntp_timestamp=ntp_from_unix(now),
            rtp_timestamp=(timestamp + int((now - at) * 90000)) & 0xFFFFFFFF,
            packet_count=self.packets & 0xFFFFFFFF,
            octet_count=self.octets & 0xFFFFFFFF,
        )

