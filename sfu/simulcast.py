"""Simulcast forwarding (DESIGN §6.1): a publisher sends 2 or 3 encodings of one video, each
subscriber gets one of them as one continuous stream.

- `Layer`: one encoding as received: its rid, media and RTX SSRCs (bound from the rid and
  repaired-rid header extensions of its first packets), measured bitrate, resolution (from VP8
  keyframes) and last sender report.
- `SimulcastProducer`: a Producer whose `on_rtp` maps each packet to its layer (one dict lookup),
  unwraps RTX per layer, parses the VP8 descriptor once, and hands the pieces to its consumers.
  Layers are ranked by resolution, then measured bitrate, whatever their rid names.
- `SimulcastConsumer`: a Consumer that forwards one layer, and changes layer only on a keyframe of
  the target layer: sequence numbers continue (a gap of one when the last frame sent was left
  unfinished), timestamps are aligned through both layers' sender reports (or advanced by one
  frame interval when a report is missing), VP8 picture id and TL0PICIDX continue.
- `SubscriberBandwidth`: the periodic layer choice of one subscriber's receive PC (see
  `sfu.bandwidth`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc.rtp import RtcpSrPacket

from . import aiortc_hooks as hooks
from . import vp8
from .aiortc_hooks import SendPath
from .bandwidth import ALLOCATE_SECONDS, Prober, StreamDemand, SubscriberBudget, quality_cap
from .consumer import KEYFRAME_RETRY_SECONDS, Consumer, SendParameters, StreamState
from .history import LAYER_RING_SIZE, PacketRing
from .producer import KEYFRAME_REQUEST_INTERVAL, LATENCY_SAMPLE, Producer
from .rtp import (
    HEADER,
    SEQ_TS,
    U32,
    abs_send_time_bytes,
    h264_is_keyframe_start,
    payload_offset,
    read_extension,
    unwrap_rtx,
)
from .simulcast_sdp import SimulcastOffer, add_simulcast_answer

if TYPE_CHECKING:
    from .transport import SubscriberTransport

log = logging.getLogger("meeting_sfu.sfu.simulcast")

LAYER_ACTIVE_SECONDS = 1.5  # a layer without packets for this long is not offered to anyone
RECORDER_ACTIVE_SECONDS = 5.0  # ... and the recorder leaves it after this long
RATE_SECONDS = 1.0  # layer bitrates are measured over windows of this length
MIN_LAYER_BITRATE = 30_000  # bits/s: a layer never costs less than this in a budget
MAX_TS_JUMP_SECONDS = 5.0  # an SR-aligned timestamp further ahead than this is not trusted
SWITCH_WINDOW = 100  # packets after a switch during which older ones are dropped
PAD_SECONDS = 0.05  # padding is sent in bursts this far apart
_PADDING = bytes(254) + b"\xff"  # a padding-only payload: 255 bytes, the last one is the count
_VP8_FULL = struct.Struct("!BBHBB")  # VP8 descriptor: X=1; I, L and T/K; 15-bit picture id


class Layer:
    """One encoding of a simulcast producer (see module docstring)."""

    __slots__ = (
        "rid",
        "ssrc",
        "rtx_ssrc",
        "rank",
        "label",
        "packets",
        "octets",
        "octets_mark",
        "bitrate",
        "last_packet",
        "max_seq",
        "width",
        "height",
        "sr",
        "pid",
        "last_pli",
        "pli_timer",
        "ring",
    )

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.ssrc = -1
        self.rtx_ssrc = -1
        self.rank = 0
        self.label = "0"
        self.packets = 0
        self.octets = 0
        self.octets_mark = 0
        self.bitrate = 0
        self.last_packet = -1e9
        self.max_seq = -1
        self.width = 0
        self.height = 0
        self.sr: tuple[int, int, float] | None = None  # ntp, rtp timestamp, monotonic arrival
        self.pid = vp8.PictureIdExtender()
        self.last_pli = -1e9
        self.pli_timer: asyncio.TimerHandle | None = None
        self.ring = PacketRing(LAYER_RING_SIZE)  # this layer's recent packets (sfu.history)

    def __repr__(self) -> str:
        return f"Layer({self.rid} {self.width}x{self.height} {self.bitrate // 1000} kbit/s)"


class SimulcastProducer(Producer):
    """A publisher's simulcast video (see module docstring)."""

    __slots__ = ("offer", "layers", "by_ssrc", "ranked", "is_vp8", "_rates_at", "_recording")

    def __init__(self, *args: Any, offer: SimulcastOffer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offer = offer
        self.layers: dict[str, Layer] = {rid: Layer(rid) for rid in offer.rids}
        self.by_ssrc: dict[int, Layer] = {}
        self.ranked: tuple[Layer, ...] = ()  # active layers, lowest first
        self.is_vp8 = self.codec.mime_type.lower() == "video/vp8"
        self._rates_at = 0.0
        self._recording: SimulcastConsumer | None = None

    # --- negotiation: the answer carries the simulcast lines ---------------------------------

    def set_offer(self, offer: SimulcastOffer) -> None:
        """A renegotiation's offer (same rids, maybe other extension ids)."""
        self.offer = offer

    async def answer(self, description: Any, video_index: int, codec: Any) -> str:
        sdp = await super().answer(description, video_index, codec)
        return add_simulcast_answer(sdp, self.offer)

    async def renegotiate(self, description: Any, parsed: Any, video_index: int, codec: Any) -> str:
        sdp = await super().renegotiate(description, parsed, video_index, codec)
        return add_simulcast_answer(sdp, self.offer)

    def _attach(self, pc: Any, transceiver: Any) -> None:
        super()._attach(pc, transceiver)
        # aiortc's receiver sees every layer: keep its NACKs per SSRC (research §3.1).
        hooks.nack_per_ssrc(transceiver.receiver)
        for layer in self.layers.values():
            if layer.ssrc >= 0 and layer.rtx_ssrc >= 0:
                hooks.map_rtx_ssrc(transceiver.receiver, layer.rtx_ssrc, layer.ssrc)

    # --- hot path ---------------------------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        if self.closed or len(data) < 12:
            return
        ssrc = U32.unpack_from(data, 8)[0]
        layer = self.by_ssrc.get(ssrc)
        if layer is None:
            layer = self._bind(ssrc, data)
            if layer is None:
                return
        offset = payload_offset(data)
        if offset < 0:
            return
        pt = data[1] & 0x7F
        if ssrc == layer.ssrc:
            if pt != self.pt:
                return
            seq = data[2] << 8 | data[3]
            if layer.max_seq < 0:
                layer.max_seq = seq
            else:
                delta = (seq - layer.max_seq) & 0xFFFF
                if delta < 0x8000:
                    if delta > 1:
                        self.stats.packets_lost[self.kind] += delta - 1
                    layer.max_seq = seq
        else:
            if pt != self.rtx_pt or layer.ssrc < 0:
                return
            unwrapped = unwrap_rtx(data, offset, self.pt, layer.ssrc)
            if unwrapped is None:
                return  # padding-only probe (aiortc's estimator counted it already)
            data = unwrapped
        now = time.monotonic()
        layer.packets += 1
        layer.octets += len(data)
        layer.last_packet = now
        self.packets += 1
        stats = self.stats
        kind = self.kind
        stats.rtp_packets_in[kind] += 1
        stats.rtp_bytes_in[kind] += len(data)
        stats.layer_packets_in[layer.label] += 1
        if now - self._rates_at >= RATE_SECONDS:
            self._update_layers(now)
        if not self.active:
            self.active = True
            self._on_active(self)
        payload = data[offset:]
        if self.is_vp8:
            desc = vp8.parse(payload)
            if desc is None:
                return
            if desc.pid_bits == 7:
                desc = desc._replace(picture_id=layer.pid.extend(desc.picture_id))
            keyframe = desc.keyframe
            if keyframe and desc.width and desc.width != layer.width:
                layer.width = desc.width
                layer.height = desc.height
                self._rank(now)
            body = payload[desc.size:]
        else:
            desc = None
            keyframe = h264_is_keyframe_start(payload)
            body = payload
        seq, ts = SEQ_TS.unpack_from(data, 2)
        abs3 = abs_send_time_bytes()
        # Kept once per layer for every consumer: late joiners are caught up from it, NACKs
        # answered from it (the descriptor keeps the extended picture id).
        layer.ring.put(seq, data, abs3, desc)
        if keyframe and layer.ring.keyframe(seq, ts, layer.ssrc, now) and layer.pli_timer is not None:
            layer.pli_timer.cancel()  # whoever asked meanwhile gets this keyframe
            layer.pli_timer = None
        b0 = data[0]
        b1 = data[1]
        if self._taps:
            self._record(layer, b0, b1, seq, ts, body, desc, abs3, keyframe, now)
        elif self._recording is not None:
            self._recording = None  # a later recording starts afresh, on a keyframe
        consumers = self.consumers
        if not consumers:
            return
        sent = 0
        octets = 0
        for consumer in consumers:
            try:
                n = consumer.forward_layer(layer, b0, b1, seq, ts, body, desc, abs3, keyframe, now)
                if n:
                    sent += 1
                    octets += n
            except Exception as exc:  # one subscriber's failure must not stop the others
                consumer.dropped += 1
                log.debug("forward failed %r: %s", consumer, exc)
        if sent:
            stats.rtp_packets_out[kind] += sent
            stats.rtp_bytes_out[kind] += octets
            if not self.packets & (LATENCY_SAMPLE - 1):
                stats.forwarding_seconds.observe(time.monotonic() - now)

    # --- layers (cold path) -----------------------------------------------------------------

    def _bind(self, ssrc: int, data: bytes) -> Layer | None:
        """Bind a new SSRC to its layer from the rid (media) or repaired-rid (RTX) extension."""
        pt = data[1] & 0x7F
        if pt == self.pt:
            ext_id, rtx = self.offer.rid_ext, False
        elif pt == self.rtx_pt:
            ext_id, rtx = self.offer.repaired_rid_ext, True
        else:
            return None
        if ext_id is None:
            return None
        value = read_extension(data, ext_id)
        if not value:
            return None
        layer = self.layers.get(value.decode("ascii", "replace"))
        if layer is None:
            return None
        old = layer.rtx_ssrc if rtx else layer.ssrc
        if old >= 0:
            self.by_ssrc.pop(old, None)  # the encoder restarted with a new SSRC
        if rtx:
            layer.rtx_ssrc = ssrc
        else:
            layer.ssrc = ssrc
            layer.sr = None
            layer.max_seq = -1
            self.ssrc = ssrc  # the base class's PLI path and checks want a media SSRC
        self.by_ssrc[ssrc] = layer
        if layer.ssrc >= 0 and layer.rtx_ssrc >= 0 and self.receiver is not None:
            hooks.map_rtx_ssrc(self.receiver, layer.rtx_ssrc, layer.ssrc)
        (log.info if old < 0 else log.debug)(  # a publisher cycling SSRCs must not flood the log
            "simulcast layer bound user=%s rid=%s ssrc=%d rtx=%s", self.user_id, layer.rid, ssrc, rtx
        )
        return layer

    def _update_layers(self, now: float) -> None:
        elapsed = now - self._rates_at if self._rates_at else RATE_SECONDS
        self._rates_at = now
        for layer in self.layers.values():
            rate = int((layer.octets - layer.octets_mark) * 8 / max(elapsed, 0.001))
            layer.octets_mark = layer.octets
            layer.bitrate = rate if not layer.bitrate else (layer.bitrate + rate) // 2
        self._rank(now)

    def _rank(self, now: float) -> None:
        active = _ranked([layer for layer in self.layers.values() if now - layer.last_packet < LAYER_ACTIVE_SECONDS])
        for i, layer in enumerate(active):
            layer.rank = i
            layer.label = str(i)
        self.ranked = tuple(active)
        recording = self._recording
        if recording is not None:
            # The recording keeps the top layer through short gaps (a browser ramping up sends
            # its top layer sparsely at first): only a layer gone for longer is left.
            kept = _ranked([x for x in self.layers.values() if now - x.last_packet < RECORDER_ACTIVE_SECONDS])
            if kept:
                recording.set_target(kept[-1])

    def layer_bitrates(self) -> list[int]:
        """The cost of each ranked layer, non-decreasing (a budget compares differences)."""
        out: list[int] = []
        for layer in self.ranked:
            out.append(max(layer.bitrate, MIN_LAYER_BITRATE, out[-1] if out else 0))
        return out

    # --- recorder: the highest layer, as one stream ------------------------------------------

    def _record(self, layer: Layer, b0: int, b1: int, seq: int, ts: int, body: bytes,
                desc: vp8.Descriptor | None, abs3: bytes, keyframe: bool, now: float) -> None:
        recording = self._recording
        if recording is None:
            recording = self._recording = SimulcastConsumer(self, "recorder", StreamState())
            recording.replays = False  # a recording starts at a live keyframe, never from the ring
            recording.bind(SendParameters(
                pt=self.pt, rtx_pt=None, ssrc=0x5EC0DE, rtx_ssrc=0, ext_before=b"", ext_after=b"",
                has_abs=False, path=SendPath(_same, self._tap_out, None),
            ))
            recording.resume()
            self._rank(now)
        recording.forward_layer(layer, b0, b1, seq, ts, body, desc, abs3, keyframe, now)

    def _tap_out(self, data: bytes, _addr: Any) -> None:
        for tap in self._taps:
            try:
                tap(self.id, self.kind, self.codec.mime_type, self.pt, self.clock_rate, data)
            except Exception:
                log.exception("tap failed")

    # --- RTCP and keyframes -----------------------------------------------------------------

    def _on_rtcp(self, packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            layer = self.by_ssrc.get(packet.ssrc)
            if layer is not None and packet.ssrc == layer.ssrc:
                info = packet.sender_info
                layer.sr = (info.ntp_timestamp, info.rtp_timestamp, time.monotonic())

    def request_keyframe(self, layer: Layer | None = None) -> None:
        """A PLI to one layer, at most one per layer per KEYFRAME_REQUEST_INTERVAL; a request
        inside the window is sent when it ends, unless a keyframe of the layer came first. None
        (the recorder's request): the layer it records, or every active layer before it has one."""
        if self.closed:
            return
        if layer is None:
            recording = self._recording
            target = recording.target if recording is not None else None
            for each in (target,) if target is not None else self.ranked:
                self.request_keyframe(each)
            return
        now = time.monotonic()
        wait = layer.last_pli + KEYFRAME_REQUEST_INTERVAL - now
        if wait <= 0:
            self._layer_pli(layer, now)
        elif layer.pli_timer is None:
            layer.pli_timer = asyncio.get_running_loop().call_later(wait, self._deferred_layer_pli, layer)

    def _deferred_layer_pli(self, layer: Layer) -> None:
        layer.pli_timer = None
        if not self.closed:
            self._layer_pli(layer, time.monotonic())

    def _layer_pli(self, layer: Layer, now: float) -> None:
        layer.last_pli = now
        if self.receiver is None or layer.ssrc < 0:
            return
        self.keyframe_requests += 1
        self.stats.keyframe_requests_sent += 1
        task = asyncio.ensure_future(hooks.send_pli(self.receiver, layer.ssrc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for layer in self.layers.values():
            if layer.pli_timer is not None:
                layer.pli_timer.cancel()
                layer.pli_timer = None
        self._recording = None
        await super().close()

    def __repr__(self) -> str:
        return f"SimulcastProducer({self.user_id}/{self.kind} {self.codec.mime_type} {list(self.layers)})"


def _ranked(layers: list[Layer]) -> list[Layer]:
    """Lowest first: by resolution when every layer's is known (from a keyframe), else by
    measured bitrate alone."""
    if all(layer.width for layer in layers):
        return sorted(layers, key=lambda layer: (layer.width * layer.height, layer.bitrate))
    return sorted(layers, key=lambda layer: layer.bitrate)


def _same(data: bytes) -> bytes:
    return data


class SimulcastConsumer(Consumer):
    """Forwards one layer of a SimulcastProducer (see module docstring)."""

    __slots__ = (
        "current",
        "target",
        "demand",
        "quality",
        "switch_seq",
        "last_marker",
        "pid_off",
        "tl0_off",
        "max_pid",
        "max_tl0",
        "switches",
        "frame_ticks",
        "replay_layer",
    )

    def __init__(
        self,
        producer: SimulcastProducer,
        subscriber_id: str,
        state: StreamState,
        on_close: Callable[[Consumer], None] | None = None,
        quality: str | None = None,
    ) -> None:
        super().__init__(producer, subscriber_id, state, on_close)
        self.current: Layer | None = None
        self.target: Layer | None = None
        self.demand = StreamDemand()
        self.quality = quality
        self.switch_seq = -1
        self.last_marker = True
        self.pid_off = 0
        self.tl0_off = 0
        self.max_pid = -1
        self.max_tl0 = -1
        self.switches = 0
        self.frame_ticks = max(1, producer.clock_rate // 30)  # one frame at 30 fps
        self.replay_layer: Layer | None = None

    # --- control ------------------------------------------------------------------------------

    def set_target(self, layer: Layer | None) -> None:
        """Forward `layer` from its next keyframe on (asked for now)."""
        if layer is self.target:
            return
        self.target = layer
        if layer is not None and layer is not self.current and not self.paused and self.bound:
            self.last_keyframe_request = time.monotonic()
            self.producer.request_keyframe(layer)  # type: ignore[call-arg]

    def _maybe_start(self) -> None:
        if self.bound and not self.paused and not self.closed:
            self.waiting_keyframe = True
            self.last_keyframe_request = time.monotonic()
            if self.target is None and self.producer.ranked:  # type: ignore[attr-defined]
                self.target = self.producer.ranked[0]  # type: ignore[attr-defined]
            if self.target is not None and not self._catch_up():
                self.producer.request_keyframe(self.target)  # type: ignore[call-arg]

    # --- catching up from the target layer's ring (a start only: a switch waits for a live
    # keyframe of the new layer, while the old one goes on, rather than rewind the picture) ---

    def _replay_source(self) -> tuple[PacketRing, int, int] | None:
        layer = self.replay_layer if self.replay_seq >= 0 else self.target
        if layer is None or (layer is not self.target and layer is not self.current):
            return None  # the target changed before the replay started the stream
        self.replay_layer = layer
        return layer.ring, layer.ssrc, layer.max_seq

    def _replay_packet(self, ring: PacketRing, i: int, now: float) -> bool:
        data: bytes = ring.packets[i]  # type: ignore[assignment]
        desc = ring.descs[i]
        payload = data[payload_offset(data):]
        if desc is not None:
            body = payload[desc.size:]
            keyframe = desc.keyframe
        else:
            body = payload
            keyframe = h264_is_keyframe_start(payload)
        seq, ts = SEQ_TS.unpack_from(data, 2)
        layer: Layer = self.replay_layer  # type: ignore[assignment]
        return self.forward_layer(layer, data[0], data[1], seq, ts, body, desc, ring.stamps[i], keyframe, now) > 0

    def _rewrite(self, ring: PacketRing, i: int, oseq: int, ts_off: int, pid_off: int, tl0_off: int) -> bytes:
        """What `forward_layer` made of ring slot `i` (a retransmission)."""
        data: bytes = ring.packets[i]  # type: ignore[assignment]
        desc = ring.descs[i]
        payload = data[payload_offset(data):]
        if desc is None:
            head, body = b"", payload
        else:
            body = payload[desc.size:]
            if desc.picture_id >= 0:
                pid = (desc.picture_id + pid_off) & 0x7FFF
                tl0 = (desc.tl0 + tl0_off) & 0xFF if desc.tl0 >= 0 else -1
                if desc.tl0 >= 0 and desc.tk >= 0:
                    head = _VP8_FULL.pack(desc.b0 | 0x80, 0xC0 | desc.tk_flags, 0x8000 | pid, tl0, desc.tk)
                else:
                    head = vp8.build(desc, pid, tl0)
            else:
                head = vp8.build(desc, 0, desc.tl0)
        ots = (U32.unpack_from(data, 4)[0] + ts_off) & 0xFFFFFFFF
        header = HEADER.pack(0x80 | self.x_bit | (data[0] & 0x20), (data[1] & 0x80) | self.pt, oseq, ots, self.ssrc)
        if self.has_abs:
            return b"".join((header, self.ext_before, ring.stamps[i], self.ext_after, head, body))  # type: ignore[arg-type]
        return b"".join((header, self.ext_before, head, body))

    def request_keyframe(self) -> None:
        """A PLI/FIR from the subscriber: to the layer it is shown (or waiting for)."""
        if not self.closed:
            layer = self.current if self.current is not None else self.target
            if layer is not None:
                self.producer.request_keyframe(layer)  # type: ignore[call-arg]

    # --- hot path ---------------------------------------------------------------------------

    def forward_layer(
        self,
        layer: Layer,
        b0: int,
        b1: int,
        seq: int,
        ts: int,
        body: bytes,
        desc: vp8.Descriptor | None,
        abs3: bytes,
        keyframe: bool,
        now: float,
    ) -> int:
        """Forward one packet if it belongs to the layer shown; the bytes sent (0: not sent)."""
        if layer is not self.current:
            if layer is not self.target or self.paused or not self.bound:
                return 0
            if not keyframe:
                if now - self.last_keyframe_request > KEYFRAME_RETRY_SECONDS:
                    self.last_keyframe_request = now
                    self.producer.request_keyframe(layer)  # type: ignore[call-arg]
                return 0
            self._switch(layer, seq, ts, desc, now)
        elif self.switch_seq >= 0:
            # Right after a switch, a late packet from before the keyframe is dropped (the decoder
            # never needs it); once the layer is well past the keyframe the check stops, or a
            # long run on one layer would wrap into it.
            since = (seq - self.switch_seq) & 0xFFFF
            if since >= 0x8000:
                return 0
            if since > SWITCH_WINDOW:
                self.switch_seq = -1
        oseq = (seq + self.seq_off) & 0xFFFF
        ots = (ts + self.ts_off) & 0xFFFFFFFF
        pid = tl0 = -1
        if desc is not None:
            # Descriptor fields by index (a NamedTuple's names cost an attribute lookup each).
            pid_in = desc[2]
            if pid_in >= 0:
                pid = (pid_in + self.pid_off) & 0x7FFF
                tl0_in = desc[4]
                tk = desc[5]
                if tl0_in >= 0 and tk >= 0:  # what browsers send: one pack
                    tl0 = (tl0_in + self.tl0_off) & 0xFF
                    head = _VP8_FULL.pack(desc[1] | 0x80, 0xC0 | desc[6], 0x8000 | pid, tl0, tk)
                else:
                    if tl0_in >= 0:
                        tl0 = (tl0_in + self.tl0_off) & 0xFF
                    head = vp8.build(desc, pid, tl0)
            else:
                head = vp8.build(desc, 0, desc[4])
        else:
            head = b""
        header = HEADER.pack(0x80 | self.x_bit | (b0 & 0x20), (b1 & 0x80) | self.pt, oseq, ots, self.ssrc)
        if self.has_abs:
            out = b"".join((header, self.ext_before, abs3, self.ext_after, head, body))
        else:
            out = b"".join((header, self.ext_before, head, body))
        self.sendto(self.protect(out), self.addr)  # type: ignore[misc]
        if ((oseq - self.max_seq) & 0xFFFF) < 0x8000:
            self.max_seq = oseq
            self.max_ts = ots
            self.last_time = now
            self.last_marker = bool(b1 & 0x80)
            if pid >= 0:
                self.max_pid = pid  # the newest packet's picture id (ids grow with sequence)
            if tl0 >= 0:
                self.max_tl0 = tl0
        self.packets += 1
        size = len(head) + len(body)
        self.octets += size
        return len(out)

    def _switch(self, layer: Layer, seq: int, ts: int, desc: vp8.Descriptor | None, now: float) -> None:
        """Start forwarding `layer` at this keyframe, continuing the subscriber's stream."""
        previous = self.current
        started = self.last_time is not None
        # Sequence: the next number, or one more when the last frame sent is unfinished (its
        # missing tail then reads as a loss, not as the start of the keyframe).
        step = 1 if self.last_marker or not started else 2
        self.seq_off = (self.max_seq + step - seq) & 0xFFFF
        self.switch_seq = seq
        # Timestamp: the same instant on the subscriber's timeline, through both layers' SRs.
        ts_off = None
        if previous is not None and previous.sr is not None and layer.sr is not None:
            ntp_old, rtp_old, _ = previous.sr
            ntp_new, rtp_new, _ = layer.sr
            ntp_delta = ((ntp_new - ntp_old + (1 << 63)) & 0xFFFFFFFFFFFFFFFF) - (1 << 63)
            candidate = (rtp_old - rtp_new + int(ntp_delta * self.clock_rate / 4294967296) + self.ts_off) & 0xFFFFFFFF
            ahead = ((ts + candidate - self.max_ts + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
            if 0 < ahead <= MAX_TS_JUMP_SECONDS * self.clock_rate:
                ts_off = candidate
        if ts_off is None:
            if self.last_time is None:
                gap = 0
            else:
                gap = max(self.frame_ticks, int((now - self.last_time) * self.clock_rate))
            ts_off = (self.max_ts + gap - ts) & 0xFFFFFFFF
        self.ts_off = ts_off
        # VP8: picture ids and TL0PICIDX go on from the last ones sent.
        if desc is not None and desc.picture_id >= 0:
            self.pid_off = (self.max_pid + 1 - desc.picture_id) & 0x7FFF if self.max_pid >= 0 else 0
            if desc.tl0 >= 0:
                self.tl0_off = (self.max_tl0 + 1 - desc.tl0) & 0xFF if self.max_tl0 >= 0 else 0
        self.src_ssrc = layer.ssrc
        self.current = layer
        self.waiting_keyframe = False
        self._mark_segment(layer.ring, layer.ssrc, seq, self.pid_off, self.tl0_off)
        if previous is not None:
            self.switches += 1
            self.producer.stats.layer_switches += 1

    def forward(self, *args: Any) -> bool:  # a SimulcastProducer calls forward_layer
        return False

    def sender_report(self, now_wall: float, now_mono: float) -> tuple[int, int, int, int] | None:
        """The shown layer's last SR translated through this consumer's timestamp offset (the
        subscriber's A/V sync needs the publisher's clock), else the local clock."""
        layer = self.current
        if layer is None or layer.sr is None or self.last_time is None:
            return super().sender_report(now_wall, now_mono)
        ntp, rtp_ts, at = layer.sr
        elapsed = now_mono - at
        ntp_out = (ntp + int(elapsed * 4294967296)) & 0xFFFFFFFFFFFFFFFF
        rtp_out = (rtp_ts + int(elapsed * self.clock_rate) + self.ts_off) & 0xFFFFFFFF
        return ntp_out, rtp_out, self.packets & 0xFFFFFFFF, self.octets & 0xFFFFFFFF


class SubscriberBandwidth:
    """Chooses the layers of one subscriber's simulcast consumers, every ALLOCATE_SECONDS while
    it has any (see `sfu.bandwidth`)."""

    __slots__ = ("transport", "budget", "prober", "_timer", "_pad_timer", "_rates", "closed")

    def __init__(self, transport: SubscriberTransport) -> None:
        self.transport = transport
        self.budget = SubscriberBudget()
        self.prober = Prober()
        self._timer: asyncio.TimerHandle | None = None
        self._pad_timer: asyncio.TimerHandle | None = None
        self._rates: dict[int, tuple[int, float, int]] = {}  # id(consumer) -> octets, time, bits/s
        self.closed = False

    def on_remb(self, bitrate: int) -> None:
        self.budget.on_remb(bitrate, time.monotonic())
        self.transport.stats.subscriber_estimate_bps.observe(bitrate)

    def on_loss(self, fraction: float) -> None:
        self.budget.on_loss(fraction, time.monotonic())

    def changed(self) -> None:
        """A consumer came or went (or its quality changed): choose now, and keep choosing."""
        if self.closed:
            return
        self.allocate()

    def allocate(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.closed:
            return
        try:
            more = self._allocate(time.monotonic())
        except Exception:  # a defect here must not end the layer choice of this subscriber
            log.exception("layer allocation failed user=%s", self.transport.user_id)
            more = True
        if more:
            self._timer = asyncio.get_running_loop().call_later(ALLOCATE_SECONDS, self.allocate)

    def _allocate(self, now: float) -> bool:
        """One allocation; True while there is something to choose for (simulcast consumers)."""
        simulcast: list[SimulcastConsumer] = []
        demands: list[StreamDemand] = []
        rates: dict[int, tuple[int, float, int]] = {}
        for consumer in self.transport.consumers:
            if consumer.closed:
                continue
            if isinstance(consumer, SimulcastConsumer):
                producer: SimulcastProducer = consumer.producer  # type: ignore[assignment]
                demand = consumer.demand
                demand.bitrates = producer.layer_bitrates()
                demand.cap = quality_cap(consumer.quality, len(demand.bitrates))
                simulcast.append(consumer)
                demands.append(demand)
            else:
                # A stream that cannot switch costs what it sends.
                octets, at, rate = self._rates.get(id(consumer), (consumer.octets, now, 0))
                if now - at >= 1.0:
                    rate = int((consumer.octets - octets) * 8 / (now - at))
                    octets, at = consumer.octets, now
                rates[id(consumer)] = (octets, at, rate)
                fixed = StreamDemand(switchable=False)
                fixed.bitrates = [rate]
                demands.append(fixed)
        self._rates = rates
        if not simulcast:
            self.prober.update(None, 0, None, now)
            return False
        used, step = self.budget.allocate(demands, now)
        if self.prober.update(self.budget.budget(now), used, step, now) and self._pad_timer is None:
            self._pad_timer = asyncio.get_running_loop().call_later(PAD_SECONDS, self._pad)
        for consumer in simulcast:
            ranked = consumer.producer.ranked  # type: ignore[attr-defined]
            target = consumer.demand.target
            if ranked and target is not None:
                consumer.set_target(ranked[min(target, len(ranked) - 1)])
        return True

    def _pad(self) -> None:
        """Send PAD_SECONDS worth of the prober's padding: padding-only RTX packets on one
        forwarded m-line, with abs-send-time so that the subscriber's estimator counts them."""
        self._pad_timer = None
        rate = self.prober.rate
        if self.closed or not rate:
            return
        consumer = next(
            (c for c in self.transport.consumers
             if c.bound and not c.paused and not c.closed and c.rtx_pt is not None and c.last_time is not None),
            None,
        )
        if consumer is not None:
            count = max(1, round(rate * PAD_SECONDS / 8 / (len(_PADDING) + 28)))
            abs3 = abs_send_time_bytes()
            stats = self.transport.stats
            try:
                for _ in range(count):
                    header = HEADER.pack(
                        0xA0 | consumer.x_bit, consumer.rtx_pt, consumer.rtx_seq, consumer.max_ts, consumer.rtx_ssrc
                    )
                    consumer.rtx_seq = (consumer.rtx_seq + 1) & 0xFFFF
                    if consumer.has_abs:
                        packet = b"".join((header, consumer.ext_before, abs3, consumer.ext_after, _PADDING))
                    else:
                        packet = b"".join((header, consumer.ext_before, _PADDING))
                    consumer.sendto(consumer.protect(packet), consumer.addr)  # type: ignore[misc]
                    stats.padding_packets_out += 1
            except Exception as exc:  # a failed probe must not stop the allocation
                log.debug("padding failed: %s", exc)
        self._pad_timer = asyncio.get_running_loop().call_later(PAD_SECONDS, self._pad)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pad_timer is not None:
            self._pad_timer.cancel()
            self._pad_timer = None


def new_consumer(
    producer: Producer,
    subscriber_id: str,
    state: StreamState,
    on_close: Callable[[Consumer], None],
    quality: str | None,
) -> Consumer:
    """The consumer that fits the producer: one layer of a simulcast producer, or plain."""
    if isinstance(producer, SimulcastProducer):
        return SimulcastConsumer(producer, subscriber_id, state, on_close, quality)
    return Consumer(producer, subscriber_id, state, on_close)


__all__ = [
    "Layer",
    "SimulcastConsumer",
    "SimulcastProducer",
    "SubscriberBandwidth",
    "new_consumer",
]
