"""Producer: a publisher's incoming video or screen stream, forwarded as RTP without decoding.

A Producer owns the publisher's sendonly peer connection (the client offers, we answer). Its
DTLS transport hands every decrypted RTP packet to `on_rtp`, which unwraps RTX, splits the
header once and gives the pieces to each Consumer; aiortc still runs its receiver statistics,
receiver reports, NACKs and REMB towards the publisher, but never reassembles or decodes frames.
With the lean receive path (`aiortc_hooks.LeanIngress`, on unless MEETING_SFU_LEAN_RECEIVE=0 or
MEETING_SFU_FASTPATH=0) the shared socket hands the publisher's SRTP straight to `on_rtp`, doing
on the way only the receiver work the publisher relies on (statistics for receiver reports, REMB,
NACKs). Keyframe requests from consumers reach the publisher as PLIs, at most one per 500 ms. The
producer keeps its recent packets once for all consumers (`sfu.history.PacketRing`): a consumer
that starts while the last keyframe is in it is caught up from it, and NACKs are answered from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.rtp import RtcpSrPacket
from aiortc.sdp import SessionDescription

from . import aiortc_hooks as hooks
from . import fastpath
from .api import MediaError, StreamKind, bad_sdp
from .history import PacketRing
from .metrics import MediaStats, watch_pc_states
from .peer import create_peer_connection, local_sdp, parse_session_description
from .rtp import SEQ_TS, U32, abs_send_time_bytes, keyframe_detector, payload_offset, unwrap_rtx

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger("meeting_sfu.sfu.producer")

KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds: at most one PLI per producer in this window
# The forwarding-latency histogram gets one packet in this many (a power of two), so that
# metrics cost one counter test per packet, not two clock reads and a histogram update.
LATENCY_SAMPLE = 16


@dataclass(frozen=True)
class CodecChoice:
    """The codec a publisher sends with, as negotiated on its PC, and what to offer subscribers."""

    mime_type: str
    clock_rate: int
    payload_type: int
    rtx_payload_type: int | None
    parameters: tuple[tuple[str, Any], ...]  # the local (aiortc) fmtp parameters

    @property
    def key(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """Two producers with the same key can share a subscriber m-line."""
        return self.mime_type.lower(), self.parameters

    def capabilities(self) -> list[RTCRtpCodecCapability]:
        return [
            RTCRtpCodecCapability(
                mimeType=self.mime_type, clockRate=self.clock_rate, parameters=dict(self.parameters)
            ),
            RTCRtpCodecCapability(mimeType="video/rtx", clockRate=self.clock_rate),
        ]


def choose_codec(offer: SessionDescription) -> tuple[int, CodecChoice]:
    """The index of the publisher's video m-line and the codec we accept on it.

    Raises MediaError 400 when the offer sends no video or only codecs we cannot forward."""
    for index, media in enumerate(offer.media):
        if media.kind != "video" or media.direction not in ("sendonly", "sendrecv"):
            continue
        if media.port == 0:
            continue
        common = hooks.common_video_codecs(media.rtp.codecs)
        base = [c for c in common if c.mimeType.lower() != "video/rtx"]
        if not base:
            offered = sorted({c.mimeType for c in media.rtp.codecs})
            raise MediaError(
                "unsupported_codec",
                "no supported video codec offered (VP8 or H.264 packetization-mode=1); "
                f"got {offered}",
            )
        chosen = base[0]
        rtx = next(
            (
                c.payloadType
                for c in common
                if c.mimeType.lower() == "video/rtx"
                and c.parameters.get("apt") == chosen.payloadType
            ),
            None,
        )
        return index, CodecChoice(
            mime_type=chosen.mimeType,
            clock_rate=chosen.clockRate,
            payload_type=chosen.payloadType,
            rtx_payload_type=rtx,
            parameters=tuple(sorted(chosen.parameters.items())),
        )
    raise bad_sdp("the offer has no sending video m-line")


def parse_offer(offer_sdp: str) -> tuple[Any, SessionDescription]:
    description = parse_session_description(offer_sdp, "offer")
    try:
        parsed = SessionDescription.parse(description.sdp)
    except Exception as exc:
        raise bad_sdp(f"sdp cannot be parsed: {exc.__class__.__name__}") from exc
    return description, parsed


def _remote(pc: RTCPeerConnection) -> SessionDescription | None:
    remote = pc.remoteDescription
    if remote is None:
        return None
    try:
        return SessionDescription.parse(remote.sdp)
    except Exception:
        return None


def _transport_identity(description: SessionDescription | None) -> tuple[Any, ...] | None:
    """ICE credentials and DTLS fingerprints of the first m-line: when they change, the client
    made a new PC or restarts ICE, which aiortc cannot follow on the same PC."""
    if description is None or not description.media:
        return None
    media = description.media[0]
    ice = media.ice
    fingerprints = tuple(
        (f.algorithm, f.value.lower()) for f in (media.dtls.fingerprints if media.dtls else [])
    )
    return (ice.usernameFragment if ice else None, ice.password if ice else None, fingerprints)


class Producer:
    """One published stream (see module docstring). Created by the Router."""

    __slots__ = (
        "id",
        "meeting_id",
        "user_id",
        "kind",
        "codec",
        "pt",
        "rtx_pt",
        "clock_rate",
        "ssrc",
        "consumers",
        "catching_up",
        "ring",
        "active",
        "closed",
        "is_keyframe",
        "pc",
        "receiver",
        "last_sr",
        "last_keyframe_request",
        "keyframe_requests",
        "packets",
        "max_seq",
        "_keyframe_timer",
        "_tasks",
        "_taps",
        "_on_active",
        "_on_peer_lost",
        "_closing_pc",
        "stats",
        "max_bitrate",
        "ingress",
    )

    def __init__(
        self,
        meeting_id: str,
        user_id: str,
        kind: StreamKind,
        codec: CodecChoice,
        taps: list[Callable[..., None]],
        on_active: Callable[[Producer], None],
        on_peer_lost: Callable[[Producer], None],
        stats: MediaStats | None = None,
    ) -> None:
        self.stats = stats if stats is not None else MediaStats()
        self.stats.producers[kind] += 1
        self.id = str(uuid.uuid4())
        self.meeting_id = meeting_id
        self.user_id = user_id
        self.kind: StreamKind = kind
        self.codec = codec
        self.pt = codec.payload_type
        self.rtx_pt = codec.rtx_payload_type if codec.rtx_payload_type is not None else -1
        self.clock_rate = codec.clock_rate
        self.ssrc = -1
        self.consumers: tuple[Consumer, ...] = ()
        self.catching_up: tuple[Consumer, ...] = ()  # being replayed the cached keyframe, not live
        self.ring = PacketRing()  # the one packet history of this stream (sfu.history)
        self.active = False
        self.closed = False
        self.is_keyframe = keyframe_detector(codec.mime_type)
        self.pc: RTCPeerConnection | None = None
        self.receiver: Any = None
        self.last_sr: tuple[int, int, int, float] | None = None  # ssrc, ntp, rtp ts, monotonic
        self.last_keyframe_request = -1e9
        self.keyframe_requests = 0
        self.packets = 0
        self.max_seq = -1  # highest sequence number seen, for loss accounting
        self._keyframe_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._taps = taps  # the router's list, shared
        self._on_active = on_active
        self._on_peer_lost = on_peer_lost
        self._closing_pc: set[RTCPeerConnection] = set()
        self.max_bitrate = 2_500_000  # the REMB cap towards the publisher ([media] settings)
        self.ingress: hooks.LeanIngress | None = None  # the lean receive path of the current PC

    # --- peer connection --------------------------------------------------------------------

    def _set_codec(self, codec: CodecChoice) -> None:
        # Same codec (the router checks the key); payload types are the publisher's and may
        # differ from one offer to the next.
        self.codec = codec
        self.pt = codec.payload_type
        self.rtx_pt = codec.rtx_payload_type if codec.rtx_payload_type is not None else -1

    async def answer(self, description: Any, video_index: int, codec: CodecChoice) -> str:
        """Answer the publisher's offer on a new PC (the first one, or after a failed
        renegotiation); consumers stay attached and resynchronise on the new SSRC."""
        self._set_codec(codec)
        pc = create_peer_connection()
        transceiver = pc.addTransceiver("video", direction="recvonly")
        transceiver.setCodecPreferences(self.codec.capabilities())
        old = self.pc
        try:
            await pc.setRemoteDescription(description)
            self._only_primary_receives(pc, transceiver, video_index)
            answer = await pc.createAnswer()
            sdp = await local_sdp(pc, answer)
        except MediaError:
            await pc.close()
            raise
        except Exception as exc:
            await pc.close()
            raise bad_sdp(f"offer rejected: {exc.__class__.__name__}: {exc}") from exc
        self._attach(pc, transceiver)
        if old is not None:
            self._closing_pc.add(old)
            await old.close()
            self._closing_pc.discard(old)
        return sdp

    async def renegotiate(
        self, description: Any, parsed: SessionDescription, video_index: int, codec: CodecChoice
    ) -> str:
        """A new offer on the running PC: answer it in place. A new PC (the producer restarts,
        consumers follow) when aiortc cannot: ICE restart or new DTLS identity (the client made
        a new PC), another payload type, or a failure."""
        pc = self.pc
        if (
            pc is None
            or pc.signalingState != "stable"
            or codec.payload_type != self.pt
            or _transport_identity(parsed) != _transport_identity(_remote(pc))
        ):
            return await self.answer(description, video_index, codec)
        try:
            await pc.setRemoteDescription(description)
            transceiver = next(
                (t for t in pc.getTransceivers() if t.receiver is self.receiver), None
            )
            if transceiver is None:
                raise ValueError("publisher m-line changed")
            self._only_primary_receives(pc, transceiver, video_index)
            answer = await pc.createAnswer()
            return await local_sdp(pc, answer)
        except Exception as exc:
            log.info("publisher renegotiation restarts the PC user=%s error=%s", self.user_id, exc)
            return await self.answer(description, video_index, codec)

    @staticmethod
    def _only_primary_receives(
        pc: RTCPeerConnection, primary: RTCRtpTransceiver, video_index: int
    ) -> None:
        for t in pc.getTransceivers():
            if t is not primary:
                t.direction = "inactive"  # extra m-lines (audio, a second video) are declined
        if primary.mid is None:
            raise ValueError("the video m-line was not matched")

    def _attach(self, pc: RTCPeerConnection, transceiver: RTCRtpTransceiver) -> None:
        watch_pc_states(pc, self.stats)
        self.pc = pc
        self.receiver = transceiver.receiver
        hooks.disable_reassembly(transceiver.receiver)
        hooks.hook_rtp_ingress(transceiver.receiver.transport, self.on_rtp)
        hooks.hook_receiver_rtcp(transceiver.receiver, self._on_rtcp)
        hooks.cap_remb(transceiver.receiver, self.max_bitrate)
        if self.ingress is not None:
            self.ingress.close()
        # The publisher's RTP from the shared socket straight to on_rtp, aiortc's receiver
        # bookkeeping done on the way (aiortc_hooks.LeanIngress); aiortc's path stays for the rest.
        self.ingress = (
            hooks.lean_ingress(transceiver.receiver.transport, transceiver.receiver, self.on_rtp, self.max_bitrate)
            if fastpath.lean_receive
            else None
        )

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc is self.pc and not self.closed and pc.connectionState in ("failed", "closed"):
                self._on_peer_lost(self)

    # --- hot path ---------------------------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        """One decrypted RTP packet from the publisher."""
        if self.closed or len(data) < 12:
            return
        pt = data[1] & 0x7F
        if pt == self.pt:
            ssrc = U32.unpack_from(data, 8)[0]
            if ssrc != self.ssrc:
                self._new_source(ssrc)
            offset = payload_offset(data)
            if offset < 0:
                return
            seq = data[2] << 8 | data[3]
            if self.max_seq < 0:
                self.max_seq = seq
            else:
                delta = (seq - self.max_seq) & 0xFFFF
                if delta < 0x8000:
                    if delta > 1:
                        self.stats.packets_lost[self.kind] += delta - 1
                    self.max_seq = seq
        elif pt == self.rtx_pt:
            if self.ssrc < 0:
                return
            offset = payload_offset(data)
            if offset < 0:
                return
            unwrapped = unwrap_rtx(data, offset, self.pt, self.ssrc)
            if unwrapped is None:
                return  # padding-only probe
            data = unwrapped
            ssrc = self.ssrc
        else:
            return
        self.packets += 1
        stats = self.stats
        kind = self.kind
        stats.rtp_packets_in[kind] += 1
        stats.rtp_bytes_in[kind] += len(data)
        if not self.active:
            self.active = True
            self._on_active(self)
        if self._taps:
            for tap in self._taps:
                try:
                    tap(self.id, self.kind, self.codec.mime_type, self.pt, self.clock_rate, data)
                except Exception:
                    log.exception("tap failed")
        payload = data[offset:]
        seq, ts = SEQ_TS.unpack_from(data, 2)
        keyframe = self.is_keyframe(payload)
        now = time.monotonic()
        abs3 = abs_send_time_bytes()
        # Kept once for every consumer, with the abs-send-time they get: late joiners are caught
        # up from it and NACKs are answered from it.
        self.ring.put(seq, data, abs3)
        if keyframe:
            self._keyframe_arrived(self.ring, seq, ts, ssrc, now)
        consumers = self.consumers
        if not consumers:
            return
        sent = 0
        if fastpath.enabled:
            # Consumers in their steady state are forwarded in C; `rest` (usually None) are
            # those starting, waiting for a keyframe or otherwise not eligible.
            try:
                sent, errors, rest = fastpath.forward(consumers, data, offset, ssrc, now, abs3)
            except Exception as exc:  # not expected; never into the receive path
                log.debug("fast path failed: %s", exc)
                sent, errors, rest = 0, 0, consumers
            if errors:
                stats.send_errors += errors
            if rest is not None:
                sent += self._forward_slow(rest, payload, seq, ts, keyframe, data, ssrc, abs3, now)
        else:
            sent = self._forward_slow(consumers, payload, seq, ts, keyframe, data, ssrc, abs3, now)
        if sent:
            stats.rtp_packets_out[kind] += sent
            stats.rtp_bytes_out[kind] += sent * len(data)
            if not self.packets & (LATENCY_SAMPLE - 1):
                stats.forwarding_seconds.observe(time.monotonic() - now)

    def _forward_slow(
        self,
        consumers: Any,
        payload: bytes,
        seq: int,
        ts: int,
        keyframe: bool,
        data: bytes,
        ssrc: int,
        abs3: bytes,
        now: float,
    ) -> int:
        """Consumer.forward for each consumer (the pure-Python path); how many sent."""
        b0 = data[0]
        b1 = data[1]
        sent = 0
        for consumer in consumers:
            try:
                if consumer.forward(b0, b1, seq, ts, ssrc, payload, abs3, keyframe, now):
                    sent += 1
            except Exception as exc:  # one subscriber's failure must not stop the others
                consumer.dropped += 1
                log.debug("forward failed %r: %s", consumer, exc)
        return sent

    def _keyframe_arrived(self, ring: PacketRing, seq: int, ts: int, ssrc: int, now: float) -> None:
        if ring.keyframe(seq, ts, ssrc, now) and self._keyframe_timer is not None:
            # Whoever asked meanwhile gets this keyframe: the deferred request is not sent.
            self._keyframe_timer.cancel()
            self._keyframe_timer = None

    def _new_source(self, ssrc: int) -> None:
        if self.ssrc >= 0:
            log.info("producer source changed user=%s kind=%s", self.user_id, self.kind)
        self.ssrc = ssrc
        self.last_sr = None
        self.max_seq = -1

    def _on_rtcp(self, packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket) and packet.ssrc == self.ssrc:
            info = packet.sender_info
            self.last_sr = (packet.ssrc, info.ntp_timestamp, info.rtp_timestamp, time.monotonic())

    # --- consumers and keyframes ------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers or consumer in self.catching_up:
            return
        if consumer.replay_seq >= 0:
            self.catching_up = self.catching_up + (consumer,)
        else:
            self.consumers = self.consumers + (consumer,)

    def remove_consumer(self, consumer: Consumer) -> None:
        self.consumers = tuple(c for c in self.consumers if c is not consumer)
        self.catching_up = tuple(c for c in self.catching_up if c is not consumer)

    def hold(self, consumer: Consumer) -> None:
        """A consumer being caught up from the ring gets no live packet until it has caught
        up (the ring gives them to it in order)."""
        self.remove_consumer(consumer)
        self.catching_up = self.catching_up + (consumer,)

    def release(self, consumer: Consumer) -> None:
        """Caught up: live from the next packet on."""
        self.remove_consumer(consumer)
        if not self.closed and not consumer.closed:
            self.consumers = self.consumers + (consumer,)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per KEYFRAME_REQUEST_INTERVAL; a
        request inside the window is sent when the window ends, unless a keyframe came first."""
        if self.closed:
            return
        now = time.monotonic()
        wait = self.last_keyframe_request + KEYFRAME_REQUEST_INTERVAL - now
        if wait <= 0:
            self._send_pli(now)
        elif self._keyframe_timer is None:
            loop = asyncio.get_running_loop()
            self._keyframe_timer = loop.call_later(wait, self._deferred_pli)

    def _deferred_pli(self) -> None:
        self._keyframe_timer = None
        if not self.closed:
            self._send_pli(time.monotonic())

    def _send_pli(self, now: float) -> None:
        if self.receiver is None or self.ssrc < 0:
            return
        self.last_keyframe_request = now
        self.keyframe_requests += 1
        self.stats.keyframe_requests_sent += 1
        task = asyncio.ensure_future(hooks.send_pli(self.receiver, self.ssrc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- close ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the PC and end every consumer (each tells its subscriber transport)."""
        if self.closed:
            return
        self.closed = True
        self.stats.producers[self.kind] -= 1
        if self._keyframe_timer is not None:
            self._keyframe_timer.cancel()
            self._keyframe_timer = None
        for consumer in self.consumers + self.catching_up:
            consumer.close()
        self.consumers = self.catching_up = ()
        if self.ingress is not None:
            self.ingress.close()
        pc, self.pc = self.pc, None
        if pc is not None:
            await pc.close()
        for task in list(self._tasks):
            task.cancel()

    def __repr__(self) -> str:
        return f"Producer({self.user_id}/{self.kind} {self.codec.mime_type})"


__all__ = ["CodecChoice", "KEYFRAME_REQUEST_INTERVAL", "Producer", "choose_codec", "parse_offer"]
