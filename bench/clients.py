"""Synthetic Carbonio web clients for the load generator.

Each `BenchClient` is one participant driving a server the way the Carbonio web client does:
the /events websocket (its queueId goes into the `queue-id` header of `join`), then either a
publisher PC (`PUT /media` with a sendonly VP8 offer, answer in MEETING_SDP_ANSWERED), an
optional audio PC (`PUT /audio/offer`, answer in MEETING_AUDIO_ANSWERED), or the receive PC of
a subscriber (`PUT /media/subscribe` for each active video stream, server offer in
MEETING_SDP_OFFERED answered with `PUT /media/answer`, confirmed by MEETING_PARTICIPANT_SUBSCRIBED).

What is measured on the client side, all with the wall clock (`time.time()`, shared by the
processes of one machine):

* Every subscriber counts decrypted RTP at its DTLS transport: packets, bytes, frames (marker
  bits), sequence gaps (loss), the first frame's arrival.
* Forwarding latency: the publisher notes the send time of each frame's last packet, keyed by a
  CRC of its RTP payload; a subscriber notes the arrival of the payload with the same CRC. A
  pass-through server leaves the payload bytes unchanged, so the two join up after the run; a
  server that re-encodes gives no matches (and no figure).
* End-to-end latency: the publisher draws its capture time (ms) into each frame as luma blocks;
  decoding subscribers read it back from decoded frames. This works through any server, the
  re-encoding baseline included, and includes encoding, jitter buffers and decoding.
* "Light" subscribers skip aiortc's receive path entirely (no reassembly, no decoding, no RTCP
  feedback) so that one client process can hold many of them.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from sfu import aiortc_hooks

from .batch_receive import BatchReceiver
from .clip import EncodedClip, ReplaySender, ReplayTrack

# --- the synthetic camera ---------------------------------------------------------------------

STAMP_BITS = 32
STAMP_COLS = 16
STAMP_BLOCK = 40  # px; rows 0-1 carry the stamp, row 2 its complement (a read check)


def draw_stamp(luma: np.ndarray, value: int) -> None:
    """Write `value` (32 bits) as black/white 40x40 blocks in the top 120 rows of `luma`."""
    b = STAMP_BLOCK
    for bit in range(STAMP_BITS):
        row, col = divmod(bit, STAMP_COLS)
        on = value >> bit & 1
        luma[row * b : (row + 1) * b, col * b : (col + 1) * b] = 235 if on else 16
        if row == 0:  # complement of the low 16 bits below the two stamp rows
            luma[2 * b : 3 * b, col * b : (col + 1) * b] = 16 if on else 235


def read_stamp(frame: av.VideoFrame) -> int | None:
    """The value drawn by `draw_stamp`, or None when the frame does not carry a readable one."""
    b = STAMP_BLOCK
    if frame.width < STAMP_COLS * b or frame.height < 3 * b:
        return None
    plane = frame.planes[0]
    y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: 3 * b, : STAMP_COLS * b]
    # Mean of each block's centre (the borders blur in VP8).
    blocks = y.reshape(3, b, STAMP_COLS, b)[:, 10:30, :, 10:30].mean(axis=(1, 3)) > 128
    value = 0
    for bit in range(STAMP_BITS):
        row, col = divmod(bit, STAMP_COLS)
        if blocks[row, col]:
            value |= 1 << bit
    check = blocks[2]
    if any(bool(check[c]) == bool(value >> c & 1) for c in range(STAMP_COLS)):
        return None
    return value


def now_ms32() -> int:
    return int(time.time() * 1000) & 0xFFFFFFFF


def age_ms(stamp: int) -> float:
    """Milliseconds since a `now_ms32` stamp (modulo 2**32 ms, about 49 days)."""
    return float((now_ms32() - stamp) & 0xFFFFFFFF)


class CameraTrack(VideoStreamTrack):
    """A webcam-like 30 fps picture: a moving gradient, a band of fixed noise that keeps the VP8
    encoder near its bitrate, and the capture time in ms stamped as luma blocks at the top."""

    def __init__(self, width: int = 640, height: int = 480, fps: int = 30, seed: int = 0) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        x = np.arange(width, dtype=np.uint16)
        y = np.arange(height, dtype=np.uint16)[:, None]
        self.base = ((x + y + seed * 37) % 256).astype(np.uint8)
        band = height // 4
        noise = np.random.default_rng(seed + 1).integers(0, 256, (band, width))
        self.base[height // 2 : height // 2 + band] = noise.astype(np.uint8)
        self.uv = np.full((height // 2, width), 128, dtype=np.uint8)
        self.frames = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        n = self.frames
        delay = self._start + n / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        luma = np.roll(self.base, n * 4, axis=1)
        draw_stamp(luma, now_ms32())
        frame = av.VideoFrame.from_ndarray(np.vstack([luma, self.uv]), format="yuv420p")
        frame.pts = int(n * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.frames += 1
        return frame


class ToneTrack(AudioStreamTrack):
    """A 440 Hz tone (48 kHz mono, 20 ms frames) so the audio mix has something to mix."""

    def __init__(self) -> None:
        super().__init__()
        self._phase = 0

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()  # paced silence with the right pts
        n = frame.samples
        t = (np.arange(n) + self._phase) / 48000
        self._phase += n
        samples = (np.sin(2 * math.pi * 440 * t) * 3000).astype(np.int16)
        frame.planes[0].update(samples.tobytes())
        return frame


# --- RTP helpers ------------------------------------------------------------------------------


def rtp_payload(data: bytes) -> bytes:
    """The payload of an RTP packet (after CSRCs and the header extension, without padding)."""
    off = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10 and len(data) >= off + 4:
        off += 4 + 4 * ((data[off + 2] << 8) | data[off + 3])
    end = len(data)
    if data[0] & 0x20 and end > off:
        end -= data[-1]
    return data[off:end]


def sdp_sections(sdp: str) -> list[dict[str, Any]]:
    """Per m-section: mid, direction, media SSRCs (RTX SSRCs of FID groups excluded)."""
    out: list[dict[str, Any]] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            out.append(
                {
                    "mid": None,
                    "ssrcs": [],
                    "rtx": set(),
                    "direction": "sendrecv",
                    "kind": line[2:].split(" ", 1)[0],
                }
            )
            continue
        if not out:
            continue
        s = out[-1]
        if line.startswith("a=mid:"):
            s["mid"] = line[6:].strip()
        elif line.startswith("a=ssrc-group:FID "):
            parts = line.split()[1:]
            s["rtx"].update(int(p) for p in parts[1:])
        elif line.startswith("a=ssrc:"):
            ssrc = int(line[7:].split(" ", 1)[0])
            if ssrc not in s["ssrcs"]:
                s["ssrcs"].append(ssrc)
        elif line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive") and line.startswith("a="):
            s["direction"] = line[2:]
    for s in out:
        s["ssrcs"] = [x for x in s["ssrcs"] if x not in s["rtx"]]
    return out


class StreamCounter:
    """RTP counters of one incoming media SSRC."""

    __slots__ = (
        "bytes",
        "cycles",
        "first_ext",
        "first_frame_at",
        "frames",
        "last_seq",
        "max_ext",
        "packets",
    )

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.frames = 0
        self.first_ext = -1
        self.max_ext = -1
        self.cycles = 0
        self.last_seq = -1
        self.first_frame_at: float | None = None

    def add(self, seq: int, size: int, marker: bool, now: float) -> None:
        self.packets += 1
        self.bytes += size
        if self.last_seq < 0:
            ext = seq
            self.first_ext = ext
        else:
            delta = (seq - self.last_seq) & 0xFFFF
            if delta < 0x8000:  # forward (possibly across a wrap)
                if seq < self.last_seq:
                    self.cycles += 1
                ext = self.cycles * 0x10000 + seq
            else:  # late or repeated packet: counted, and the highest sequence number stays
                ext = -1
        if ext > self.max_ext:
            self.max_ext = ext
            self.last_seq = seq
        if marker:
            self.frames += 1
            if self.first_frame_at is None:
                self.first_frame_at = now

    def snapshot(self) -> dict[str, float]:
        expected = self.max_ext - self.first_ext + 1 if self.first_ext >= 0 else 0
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "frames": self.frames,
            "expected": expected,
        }


# --- the events socket ------------------------------------------------------------------------


class Events:
    """The /events websocket of one client: keeps unconsumed messages, calls handlers."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.queue_id = ""
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._kept: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> None:
        first = await asyncio.wait_for(self.ws.receive_json(), timeout)
        if first.get("type") != "websocketConnected":
            raise RuntimeError(f"unexpected first message {first.get('type')}")
        self.queue_id = first["queueId"]
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = msg.json()
            handler = self.handlers.get(data.get("type", ""))
            if handler is not None:
                handler(data)
            else:
                self._kept.append(data)
                del self._kept[:-200]  # bounded: waiters look only at recent messages
                self._changed.set()
        self._changed.set()

    async def wait(
        self, type_: str, predicate: Callable[[dict], bool] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self._kept):
                if m.get("type") == type_ and (predicate is None or predicate(m)):
                    del self._kept[i]
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {type_} within {timeout:.0f} s")
            if self.ws.closed:
                raise RuntimeError(f"events socket closed before {type_}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._reader.cancel()


# --- one participant --------------------------------------------------------------------------


@dataclass
class ClientSpec:
    user_id: str
    token: str
    meeting_id: str
    role: str  # "publisher" | "subscriber"
    decode: bool = False  # subscribers: decode (fps, e2e latency) or only count RTP
    audio: bool = False
    seed: int = 0
    publishers: list[str] = field(default_factory=list)  # user ids a subscriber expects
    join_delay: float = 0.0  # s after the subscribers' start (the --join-batch schedule)
    base_url: str = ""  # the node its calls go to (a cluster's owner of its meeting); empty: the bench's one
    # light subscribers with --reading: its RTP is dropped and counted by the kernel, never read
    kernel_count: bool = False


def _idle(receiver: Any, connection: Any) -> None:
    """A batched light subscriber's aiortc timers stop: what is left runs only when the server
    asks (its consent checks are answered from the batch). Its own consent checks of the server
    go (the server does not rely on them), and so does its receiver's RTCP task, which wakes
    every second to send nothing (no packet reaches the receiver: no report block, no REMB)."""
    task = getattr(connection, "_query_consent_task", None)
    if task is not None:
        task.cancel()
        connection._query_consent_task = None
    rtcp = getattr(receiver, "_RTCRtpReceiver__rtcp_task", None)
    started = getattr(receiver, "_RTCRtpReceiver__rtcp_started", None)
    if rtcp is not None and started is not None and started.is_set():
        rtcp.cancel()  # inside its loop: it marks itself exited, as receiver.stop() awaits


def client_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class ApiError(RuntimeError):
    def __init__(self, status: int, body: Any, what: str) -> None:
        super().__init__(f"{what}: HTTP {status} {body}")
        self.status = status


class BenchClient:
    """One synthetic participant (publisher or subscriber) of one meeting."""

    def __init__(
        self,
        spec: ClientSpec,
        base_url: str,
        http: aiohttp.ClientSession,
        *,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        timeout: float = 20.0,
        replay_bitrate: int | None = None,
        batch: BatchReceiver | None = None,
    ):
        self.spec = spec
        self.base_url = (spec.base_url or base_url).rstrip("/")
        self.http = http
        self.width, self.height, self.fps = width, height, fps
        self.timeout = timeout
        # publisher: replay a clip encoded once at this bitrate instead of encoding live
        self.replay_bitrate = replay_bitrate
        self.batch = batch  # light subscriber: its socket goes to the batch reader once ready
        self.events: Events | None = None
        self.pcs: list[RTCPeerConnection] = []
        self.errors: list[str] = []
        self.joined_at: float | None = None
        self.connected_at: float | None = None  # subscriber: its receive PC connected (DTLS up)
        self.ready_at: float | None = None
        # publisher
        self.camera: CameraTrack | ReplayTrack | None = None
        self.replay_sender: ReplaySender | None = None
        # payload CRC of a frame's last packet -> send time, in the window
        self.sent_frames: dict[int, float] = {}
        # subscriber
        self.sub_pc: RTCPeerConnection | None = None
        self.counters: dict[int, StreamCounter] = {}  # media SSRC -> counters
        self.ssrc_mid: dict[int, str] = {}
        self.mid_user: dict[str, str] = {}
        self.other_packets = 0
        self.arrivals: list[tuple[int, float]] = []  # (payload CRC, arrival) in the window
        self.e2e_ms: list[float] = []  # in the window
        self.decoded = 0
        self.audio_packets = 0  # RTP of the audio mix received
        self.recording = False  # inside the measuring window
        self._requested: set[str] = set()
        self._to_subscribe: list[str] = []
        self._actions: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []
        self._hooked: set[int] = set()
        self._batched: list[Any] = []
        self.trace: list[str] = []

    # -- HTTP ----------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ok: tuple[int, ...] = (200, 204),
        headers: dict[str, str] | None = None,
    ) -> Any:
        h = {"Authorization": f"Bearer {self.spec.token}"}
        h.update(headers or {})
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with self.http.request(
            method, self.base_url + path, json=body, headers=h, timeout=timeout
        ) as r:
            raw = await r.read()
            data: Any = None
            if raw:
                try:
                    data = await r.json(content_type=None)
                except ValueError:
                    data = raw.decode(errors="replace")[:200]
            if r.status not in ok:
                raise ApiError(r.status, data, f"{method} {path}")
            return data

    @property
    def meeting(self) -> str:
        return f"/meetings/{self.spec.meeting_id}"

    # -- joining -------------------------------------------------------------------------------

    async def join(self) -> None:
        ws = await self.http.ws_connect(
            self.base_url + "/events",
            headers={"Authorization": f"Bearer {self.spec.token}"},
            heartbeat=None,
            timeout=aiohttp.ClientWSTimeout(ws_close=5),
        )
        self.events = Events(ws)
        if self.spec.role == "subscriber":
            self.events.handlers["MEETING_MEDIA_STREAM_CHANGED"] = self._on_stream_changed
            self.events.handlers["MEETING_SDP_OFFERED"] = lambda m: self._actions.put_nowait(
                ("offer", m)
            )
            self.events.handlers["MEETING_PARTICIPANT_SUBSCRIBED"] = self._on_subscribed
        await self.events.start(self.timeout)
        self.joined_at = time.time()
        body = await self.call(
            "POST",
            self.meeting + "/join",
            {"audioStreamEnabled": False, "videoStreamEnabled": False},
            headers={"queue-id": self.events.queue_id},
            ok=(200,),
        )
        if not isinstance(body, dict) or body.get("status") != "ACCEPTED":
            raise RuntimeError(f"join answered {body}")

    async def start(self) -> None:
        """Join and set up media; returns when the client is ready (publisher answered,
        subscriber receiving a frame of every expected stream)."""
        await self.join()
        if self.spec.audio:
            try:
                await self._audio()
            except Exception as exc:  # reported, video goes on
                self.errors.append(f"audio: {exc}")
        if self.spec.role == "publisher":
            await self._publish()
            self.ready_at = time.time()
        else:
            self._tasks.append(asyncio.ensure_future(self._signalling()))
            meeting = await self.call("GET", self.meeting, ok=(200,))
            for p in meeting.get("participants", []) if isinstance(meeting, dict) else []:
                if p.get("videoStreamEnabled") and p.get("userId") != self.spec.user_id:
                    self._want(p["userId"])
            await self._wait_first_frames()
            self.ready_at = time.time()
            if self.batch is not None and not self.spec.decode and self.sub_pc is not None:
                for t in self.sub_pc.getTransceivers():
                    connection = t.receiver.transport.transport._connection
                    for protocol in connection._protocols:
                        if protocol.transport is not None and protocol not in self._batched:
                            self._batched.append(protocol)
                            self.batch.add(protocol.transport, protocol, self.counters, self.spec.kernel_count)
                    _idle(t.receiver, connection)

    # -- publisher -----------------------------------------------------------------------------

    async def _publish(self) -> None:
        assert self.events is not None
        pc = client_pc()
        self.pcs.append(pc)
        replay = None
        if self.replay_bitrate:
            clip = EncodedClip.shared(self.width, self.height, self.fps, self.replay_bitrate)
            self.camera = ReplayTrack(clip)
            # aiortc's sender idles; bench/clip.py's ReplaySender sends the clip's RTP.
            transceiver = pc.addTransceiver(aiortc_hooks.IdleTrack(), direction="sendonly")
            sender = transceiver.sender
            replay = self.replay_sender = ReplaySender(self.camera, sender._ssrc, sender._rtx_ssrc, self._sent_frame)
            replay.install(sender)
        else:
            self.camera = CameraTrack(self.width, self.height, self.fps, seed=self.spec.seed)
            transceiver = pc.addTransceiver(self.camera, direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences(
            [c for c in caps if c.mimeType in ("video/VP8", "video/rtx")]
        )
        await pc.setLocalDescription(await pc.createOffer())
        await self.call(
            "PUT",
            self.meeting + "/media",
            {"type": "video", "enabled": True, "sdp": pc.localDescription.sdp},
        )
        answered = await self.events.wait(
            "MEETING_SDP_ANSWERED", lambda m: m.get("mediaType") == "VIDEO", self.timeout
        )
        await pc.setRemoteDescription(RTCSessionDescription(answered["sdp"], "answer"))
        if replay is None:
            self._hook_sender(transceiver.sender.transport)
        if isinstance(self.camera, ReplayTrack):
            # aiortc answers a PLI/FIR by asking its encoder for a keyframe; a replayed clip
            # has no encoder, so the request goes to the track (the clip's keyframe is next).
            transceiver.sender._send_keyframe = self.camera.request_keyframe

    def _sent_frame(self, payload: bytes) -> None:
        """A replayed frame's last packet went out (the forwarding latency's send time)."""
        if self.recording:  # bounded by the window
            self.sent_frames.setdefault(zlib.crc32(payload), time.time())

    def _hook_sender(self, dtls: Any) -> None:
        original = dtls._send_rtp
        sent = self.sent_frames

        async def send_rtp(data: bytes) -> None:
            if data[1] & 0x80 and self.recording:  # bounded by the window
                sent.setdefault(zlib.crc32(rtp_payload(data)), time.time())
            await original(data)

        dtls._send_rtp = send_rtp

    async def _audio(self) -> None:
        assert self.events is not None
        pc = client_pc()
        self.pcs.append(pc)
        if self.spec.role == "publisher":
            pc.addTrack(ToneTrack())
        else:
            pc.addTrack(AudioStreamTrack())
        # Decoding subscribers play the mix (aiortc decodes it); the others only count it.
        hear = self.spec.decode
        if hear:
            pc.on("track", lambda t: self._tasks.append(asyncio.ensure_future(self._drain(t))))
        await pc.setLocalDescription(await pc.createOffer())
        await self.call("PUT", self.meeting + "/audio/offer", {"sdp": pc.localDescription.sdp})
        answered = await self.events.wait("MEETING_AUDIO_ANSWERED", None, self.timeout)
        await pc.setRemoteDescription(RTCSessionDescription(answered["sdp"], "answer"))
        receiver = pc.getTransceivers()[0].receiver
        if not hear:
            aiortc_hooks.disable_reassembly(receiver)
        dtls = receiver.transport
        original = dtls._handle_rtp_data

        async def count_mix(data: bytes, arrival_time_ms: int) -> None:
            self.audio_packets += 1
            if hear:
                await original(data, arrival_time_ms)

        dtls._handle_rtp_data = count_mix
        if self.spec.role == "publisher":
            await self.call("PUT", self.meeting + "/audio", {"enabled": True})

    @staticmethod
    async def _drain(track: Any) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return

    # -- subscriber ----------------------------------------------------------------------------

    def _on_stream_changed(self, m: dict[str, Any]) -> None:
        self._note(f"stream {m.get('userId', '')[:4]} active={m.get('active')}")
        if (
            m.get("mediaType") == "VIDEO"
            and m.get("active") is True
            and m.get("userId") != self.spec.user_id
        ):
            self._want(m["userId"])

    def _want(self, user_id: str) -> None:
        self._note(f"want {user_id[:4]}")
        if user_id not in self._requested:
            self._requested.add(user_id)
            self._to_subscribe.append(user_id)
            self._actions.put_nowait(("subscribe", None))

    def _note(self, what: str) -> None:
        """A short signalling trace, quoted in error reports."""
        self.trace.append(f"{time.time() - (self.joined_at or 0):.3f} {what}")
        del self.trace[:-20]

    def _on_subscribed(self, m: dict[str, Any]) -> None:
        self._note(f"subscribed {len(m.get('streams', []))}")
        for s in m.get("streams", []):
            if s.get("mid") is not None:
                self.mid_user[str(s["mid"])] = s.get("userId", "")

    async def _signalling(self) -> None:
        """Serialises subscribe requests and offer/answer exchanges, as a browser tab does."""
        while True:
            kind, item = await self._actions.get()
            try:
                if kind == "subscribe":
                    users, self._to_subscribe = self._to_subscribe, []
                    if not users:  # taken by an earlier request
                        continue
                    self._note(f"subscribe {len(users)}")
                    await self.call(
                        "PUT",
                        self.meeting + "/media/subscribe",
                        {
                            "subscribe": [{"userId": u, "type": "video"} for u in users],
                            "unsubscribe": [],
                        },
                    )
                elif kind == "offer":
                    self._note(f"offer {len(sdp_sections(item['sdp']))} m-lines")
                    await self._answer(item["sdp"])
                    self._note("answered")
            except Exception as exc:
                self.errors.append(f"{kind}: {exc} [{'; '.join(self.trace)}]")

    async def _answer(self, sdp: str) -> None:
        if self.sub_pc is None:
            self.sub_pc = client_pc()
            self.pcs.append(self.sub_pc)
            self.sub_pc.on("track", self._on_track)
            sub_pc = self.sub_pc

            @sub_pc.on("connectionstatechange")
            def on_state() -> None:
                if sub_pc.connectionState == "connected" and self.connected_at is None:
                    self.connected_at = time.time()
        pc = self.sub_pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        for s in sdp_sections(sdp):
            if s["kind"] != "video":
                continue
            for ssrc in s["ssrcs"]:
                if s["mid"] is not None:
                    self.ssrc_mid[ssrc] = s["mid"]
                self.counters.setdefault(ssrc, StreamCounter())
        for t in pc.getTransceivers():
            if not self.spec.decode:
                aiortc_hooks.disable_reassembly(t.receiver)
            dtls = t.receiver.transport
            if id(dtls) not in self._hooked:
                self._hooked.add(id(dtls))
                self._hook_receiver(dtls)
        await pc.setLocalDescription(await pc.createAnswer())
        if not self.spec.decode:
            self._count_before_decryption(pc)
        await self.call("PUT", self.meeting + "/media/answer", {"sdp": pc.localDescription.sdp})

    def _count_before_decryption(self, pc: RTCPeerConnection) -> None:
        """Light subscribers count SRTP packets by their header (sent in the clear) as they
        arrive on the ICE socket, and drop them there: no SRTP decryption, no aiortc receive path,
        so a light subscriber costs a fraction of what the server spends forwarding to it and the
        load generator leaves the machine's cores to the server under test."""
        counters = self.counters
        for t in pc.getTransceivers():
            connection = t.receiver.transport.transport._connection
            for protocol in connection._protocols:
                if id(protocol) in self._hooked:
                    continue
                self._hooked.add(id(protocol))
                original = protocol.datagram_received

                def datagram_received(data: bytes, addr: Any, original: Any = original) -> None:
                    # RFC 7983: 128..191 is RTP or RTCP; RTCP packet types are 192..223.
                    if len(data) >= 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
                        c = counters.get(int.from_bytes(data[8:12], "big"))
                        if c is None:
                            self.other_packets += 1
                        else:
                            c.add((data[2] << 8) | data[3], len(data), bool(data[1] & 0x80), time.time())
                        return
                    original(data, addr)

                protocol.datagram_received = datagram_received

    def _hook_receiver(self, dtls: Any) -> None:
        counters = self.counters
        arrivals = self.arrivals
        light = not self.spec.decode
        original = dtls._handle_rtp_data

        async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
            ssrc = int.from_bytes(data[8:12], "big")
            c = counters.get(ssrc)
            marker = bool(data[1] & 0x80)
            if c is None:
                self.other_packets += 1
            else:
                now = time.time()
                c.add((data[2] << 8) | data[3], len(data), marker, now)
                if marker and self.recording:
                    arrivals.append((zlib.crc32(rtp_payload(data)), now))
            if not light:
                await original(data, arrival_time_ms)

        dtls._handle_rtp_data = handle_rtp_data

    def _on_track(self, track: Any) -> None:
        if self.spec.decode and track.kind == "video":
            self._tasks.append(asyncio.ensure_future(self._decode(track)))

    async def _decode(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.decoded += 1
            if self.recording:
                stamp = read_stamp(frame)
                if stamp is not None:
                    age = age_ms(stamp)
                    if age < 60_000:
                        self.e2e_ms.append(age)

    def receiving(self) -> int:
        """How many expected streams have delivered a frame."""
        got = sum(1 for c in self.counters.values() if c.frames > 0)
        return got

    async def _wait_first_frames(self) -> None:
        expected = len([u for u in self.spec.publishers if u != self.spec.user_id])
        deadline = time.monotonic() + self.timeout
        while self.receiving() < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.receiving()}/{expected} streams within {self.timeout:.0f} s"
                )
            # A failed exchange is reported, not fatal: a later offer may still bring the
            # streams, as it would in a browser.
            await asyncio.sleep(0.05)

    def first_frame_delay(self) -> float | None:
        """Seconds from the join request to the first frame of the last expected stream."""
        firsts = [c.first_frame_at for c in self.counters.values() if c.first_frame_at]
        if self.joined_at is None or not firsts:
            return None
        return max(firsts) - self.joined_at

    def first_frame_after_connect(self) -> float | None:
        """Seconds from the receive PC's connection (ICE and DTLS done) to that first frame: the
        server's part once media can flow (a keyframe to wait for, or none)."""
        firsts = [c.first_frame_at for c in self.counters.values() if c.first_frame_at]
        if self.connected_at is None or not firsts:
            return None
        return max(firsts) - self.connected_at

    # -- measuring -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        kernel = self.batch.kernel_datagrams(self._batched) if self.batch is not None else None
        return {
            "at": time.time(),
            # a kernel-counted subscriber's streams are never read: its datagrams say what came
            "streams": {} if kernel is not None else {ssrc: c.snapshot() for ssrc, c in self.counters.items()},
            "kernel_datagrams": kernel,
            "decoded": self.decoded,
            "audio_packets": self.audio_packets,
            "sent_frames": self.camera.frames if self.camera else 0,
            "keyframes_requested": getattr(self.camera, "keyframes_requested", 0),
        }

    async def close(self) -> None:
        if self.replay_sender is not None:
            self.replay_sender.stop()
        for task in self._tasks:
            task.cancel()
        for pc in self.pcs:
            try:
                await asyncio.wait_for(pc.close(), 5)
            except Exception:
                pass
        if self.events is not None:
            try:
                await self.events.close()
            except Exception:
                pass
