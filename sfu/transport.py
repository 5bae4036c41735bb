"""SubscriberTransport: a participant's receive PC, offered by the server, one m-line per stream.

Each m-line ("slot") has an idle aiortc sender that provides its SSRCs, the SDP and the RTCP
routing; a Consumer sends the RTP. Subscribing adds a consumer on a free slot with the same codec
(an inactive m-line is reused) or on a new m-line; unsubscribing, or the end of the producer,
turns the m-line `a=inactive`. Every change renegotiates the same PC (same ICE credentials and
DTLS fingerprint): no ICE restart.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)

from . import aiortc_hooks as hooks
from . import fastpath
from .api import MediaError, StreamKind, SubscribedStream, bad_sdp
from .consumer import Consumer, SendParameters, StreamState
from .metrics import MediaStats, watch_pc_states
from .peer import create_peer_connection, local_sdp, parse_session_description
from .rtp import ABS_SEND_TIME_URI, MID_URI, extension_block, ntp_from_unix
from .simulcast import SimulcastConsumer, SubscriberBandwidth, new_consumer

if TYPE_CHECKING:
    from .producer import CodecChoice, Producer

log = logging.getLogger("meeting_sfu.sfu.transport")


class Slot:
    """One m-line of the receive PC and the consumer currently on it (if any)."""

    __slots__ = (
        "transceiver",
        "codec_key",
        "stream_id",
        "consumer",
        "state",
        "params",
        "remb",
    )

    def __init__(self, transceiver: RTCRtpTransceiver, codec: CodecChoice) -> None:
        self.transceiver = transceiver
        self.codec_key = codec.key
        self.stream_id = "-"
        self.consumer: Consumer | None = None
        self.state = StreamState()
        self.params: SendParameters | None = None
        self.remb: int | None = None

    @property
    def mid(self) -> str | None:
        return self.transceiver.mid

    @property
    def ssrc(self) -> int:
        return hooks.sender_ssrcs(self.transceiver.sender)[0]


# How long an unanswered offer of the receive PC holds back a new one before it counts as lost.
PENDING_OFFER_SECONDS = 10.0

_MSID_LINE = re.compile(r"^a=msid:.*$")


def set_msids(sdp: str, stream_ids: dict[int, str]) -> str:
    """Write `a=msid:<stream id> <mid>` in each m-section, found by its sender SSRC."""
    sections: list[list[str]] = [[]]
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    out: list[str] = list(sections[0])
    for section in sections[1:]:
        mid = next((ln[6:] for ln in section if ln.startswith("a=mid:")), None)
        ssrc = next((ln[7:].split(" ", 1)[0] for ln in section if ln.startswith("a=ssrc:")), None)
        stream = stream_ids.get(int(ssrc)) if ssrc and ssrc.isdigit() else None
        for line in section:
            if stream is not None and mid is not None and _MSID_LINE.match(line):
                line = f"a=msid:{stream} {mid}"
            out.append(line)
    return "\r\n".join(out)


class SubscriberTransport:
    """The receive PC of one participant (see module docstring)."""

    def __init__(
        self,
        meeting_id: str,
        user_id: str,
        on_offer: Callable[[SubscriberTransport, str], None],
        on_peer_lost: Callable[[SubscriberTransport], None],
        stats: MediaStats | None = None,
    ) -> None:
        self.stats = stats if stats is not None else MediaStats()
        self.meeting_id = meeting_id
        self.user_id = user_id
        self.pc: RTCPeerConnection | None = None
        self.slots: list[Slot] = []
        self.closed = False
        self._lock = asyncio.Lock()
        self._needs_offer = False
        self._offered_at = 0.0
        self._reoffer_task: asyncio.Task[None] | None = None
        self._on_offer = on_offer
        self._on_peer_lost = on_peer_lost
        self.bandwidth = SubscriberBandwidth(self)  # simulcast layer choice (DESIGN §6.1)
        # the lean RTCP path of the receive PC's connection (aiortc_hooks.RtcpIngress)
        self.rtcp_ingress: hooks.RtcpIngress | None = None

    # --- queries ----------------------------------------------------------------------------

    def consumer_of(self, user_id: str, kind: StreamKind) -> Consumer | None:
        for slot in self.slots:
            c = slot.consumer
            if c is not None and c.producer.user_id == user_id and c.producer.kind == kind:
                return c
        return None

    def streams(self) -> list[SubscribedStream]:
        """Every stream forwarded on an m-line the client has accepted."""
        out = []
        for slot in self.slots:
            c = slot.consumer
            if c is not None and not c.paused and slot.mid is not None:
                out.append(SubscribedStream(c.producer.user_id, c.producer.kind, slot.mid))
        return out

    @property
    def consumers(self) -> list[Consumer]:
        return [s.consumer for s in self.slots if s.consumer is not None]

    # --- subscriptions ----------------------------------------------------------------------

    async def update(
        self,
        subscribe: list[Producer],
        unsubscribe: list[tuple[str, str]],
        qualities: dict[str, str] | None = None,
    ) -> str | None:
        """Apply a subscription change; the new offer, or None when nothing changed.
        `qualities` (producer id -> "low" | "medium" | "high") caps simulcast layers."""
        qualities = qualities or {}
        async with self._lock:
            if self.closed:
                raise MediaError("closed", "the receive connection is closed")
            changed = False
            for user_id, kind in unsubscribe:
                consumer = self.consumer_of(user_id, kind)  # type: ignore[arg-type]
                if consumer is not None:
                    consumer.close()  # -> _consumer_closed frees the slot
                    changed = True
            for producer in subscribe:
                existing = self.consumer_of(producer.user_id, producer.kind)
                if isinstance(existing, SimulcastConsumer) and existing.producer is producer:
                    existing.quality = qualities.get(producer.id)  # a new cap, no renegotiation
                if producer.closed or existing is not None:
                    continue
                self._add_consumer(producer, qualities.get(producer.id))
                changed = True
            self.bandwidth.changed()
            if not changed:
                return None
            if (
                self.pc is not None
                and self.pc.signalingState == "have-local-offer"
                and time.monotonic() - self._offered_at < PENDING_OFFER_SECONDS
            ):
                # An offer is still waiting for its answer: a second one would make that answer
                # fail. This change goes out as a re-offer once the pending one is answered
                # (an offer left unanswered for long is taken as lost and replaced).
                self._needs_offer = True
                return None
            return await self._offer()

    def _add_consumer(self, producer: Producer, quality: str | None = None) -> None:
        slot = next(
            (s for s in self.slots if s.consumer is None and s.codec_key == producer.codec.key),
            None,
        )
        if slot is None:
            slot = self._new_slot(producer.codec)
        consumer = new_consumer(producer, self.user_id, slot.state, self._consumer_closed, quality)
        slot.consumer = consumer
        slot.stream_id = f"{producer.user_id}/{producer.kind}"
        slot.transceiver.direction = "sendonly"
        consumer.mid = slot.mid
        if slot.params is not None:
            consumer.bind(slot.params)
        producer.add_consumer(consumer)
        self.stats.consumers[producer.kind] += 1

    def _new_slot(self, codec: CodecChoice) -> Slot:
        if self.pc is None:
            self.pc = create_peer_connection()
            pc = self.pc
            watch_pc_states(pc, self.stats)

            @pc.on("connectionstatechange")
            def on_state() -> None:
                if pc is self.pc and not self.closed and pc.connectionState in ("failed", "closed"):
                    self._on_peer_lost(self)

        transceiver = self.pc.addTransceiver(hooks.IdleTrack(), direction="sendonly")
        transceiver.setCodecPreferences(codec.capabilities())
        hooks.idle_receiver(transceiver.receiver)  # memory per subscriber m-line
        slot = Slot(transceiver, codec)
        sender = transceiver.sender
        hooks.hook_sender_start(sender, lambda parameters: self._slot_started(slot, parameters))
        hooks.hook_sender_rtcp(sender, lambda packet: self._slot_rtcp(slot, packet))
        if fastpath.lean_rtcp:
            hooks.batch_sender_reports(sender, lambda: self._sender_info(slot))
        else:
            hooks.hook_sender_reports(sender, lambda packets: self._slot_report(slot, packets))
        self.slots.append(slot)
        return slot

    def _consumer_closed(self, consumer: Consumer) -> None:
        self.stats.consumers[consumer.producer.kind] -= 1
        for slot in self.slots:
            if slot.consumer is consumer:
                consumer.save_state(slot.state)
                slot.consumer = None
                slot.transceiver.direction = "inactive"
        if self.closed:
            return
        if self._lock.locked():
            # A negotiation is under way: offer again once it is answered.
            self._needs_offer = True
        else:
            # Ended by its producer: tell the client on our own.
            self._schedule_reoffer()

    # --- negotiation ------------------------------------------------------------------------

    async def _offer(self) -> str:
        assert self.pc is not None
        self._needs_offer = False  # this offer carries every change made before this point
        self._offered_at = time.monotonic()
        for slot in self.slots:
            slot.transceiver.direction = "sendonly" if slot.consumer is not None else "inactive"
        offer = await self.pc.createOffer()
        sdp = set_msids(offer.sdp, {slot.ssrc: slot.stream_id for slot in self.slots})
        text = await local_sdp(self.pc, RTCSessionDescription(sdp=sdp, type="offer"))
        for slot in self.slots:
            if slot.consumer is not None:
                slot.consumer.mid = slot.mid
        return text

    async def apply_answer(self, answer_sdp: str) -> list[SubscribedStream]:
        description = parse_session_description(answer_sdp, "answer")
        async with self._lock:
            if self.closed or self.pc is None:
                raise MediaError("no_offer", "there is no receive connection to answer")
            if self.pc.signalingState != "have-local-offer":
                raise MediaError("no_offer", "no offer is waiting for an answer")
            try:
                await self.pc.setRemoteDescription(description)
            except Exception as exc:
                raise bad_sdp(f"answer rejected: {exc.__class__.__name__}: {exc}") from exc
            for slot in self.slots:
                c = slot.consumer
                if c is None:
                    continue
                if c.paused and slot.transceiver.currentDirection in ("sendonly", "sendrecv"):
                    c.resume()
            if self._needs_offer:
                self._schedule_reoffer()
            return self.streams()

    def _schedule_reoffer(self) -> None:
        if self._reoffer_task is None or self._reoffer_task.done():
            self._reoffer_task = asyncio.ensure_future(self._reoffer())

    async def _reoffer(self) -> None:
        await asyncio.sleep(0)  # one offer for every end in this loop iteration
        async with self._lock:
            if self.closed or self.pc is None:
                return
            if self.pc.signalingState != "stable":
                self._needs_offer = True  # sent once the pending offer is answered
                return
            try:
                sdp = await self._offer()
            except Exception:
                log.exception("re-offer failed user=%s", self.user_id)
                return
        self._on_offer(self, sdp)

    # --- per-slot hooks ---------------------------------------------------------------------

    def _slot_started(self, slot: Slot, parameters: Any) -> None:
        """aiortc started the slot's sender: DTLS is up, the negotiated values are final."""
        pc = self.pc
        if pc is None or self.closed:
            return
        transport = slot.transceiver.sender.transport
        path = hooks.send_path(transport)
        if path is None:
            log.warning("subscriber send path unavailable user=%s", self.user_id)
            return
        if fastpath.lean_rtcp and (self.rtcp_ingress is None or self.rtcp_ingress.dtls is not transport):
            if self.rtcp_ingress is not None:
                self.rtcp_ingress.close()
            self.rtcp_ingress = hooks.lean_rtcp(transport)
        codecs = parameters.codecs
        pt = codecs[0].payloadType
        rtx_pt = next(
            (
                c.payloadType
                for c in codecs
                if c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") == pt
            ),
            None,
        )
        ids = {e.uri: e.id for e in parameters.headerExtensions}
        mid_id = ids.get(MID_URI)
        abs_id = ids.get(ABS_SEND_TIME_URI)
        before, after = extension_block(mid_id, slot.mid, abs_id)
        ssrc, rtx_ssrc = hooks.sender_ssrcs(slot.transceiver.sender)
        slot.params = SendParameters(
            pt=pt,
            rtx_pt=rtx_pt,
            ssrc=ssrc,
            rtx_ssrc=rtx_ssrc,
            ext_before=before,
            ext_after=after,
            has_abs=abs_id is not None and 1 <= abs_id <= 14,
            path=path,
        )
        if slot.consumer is not None:
            slot.consumer.bind(slot.params)

    def _slot_rtcp(self, slot: Slot, packet: Any) -> bool:
        """RTCP from the subscriber about this m-line; True when fully handled here."""
        consumer = slot.consumer
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            self.stats.nacks_received += len(packet.lost)
            if consumer is not None:
                refused = consumer.rtx_refused
                self.stats.retransmissions += consumer.retransmit(packet.lost)
                self.stats.retransmissions_refused += consumer.rtx_refused - refused
            return True
        if isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                if packet.fmt == RTCP_PSFB_PLI:
                    self.stats.plis_received += 1
                else:
                    self.stats.firs_received += 1
                if consumer is not None:
                    consumer.request_keyframe()
            elif packet.fmt == RTCP_PSFB_APP:
                try:
                    slot.remb = unpack_remb_fci(packet.fci)[0]
                except ValueError:
                    pass
                else:
                    self.bandwidth.on_remb(slot.remb)
            return True
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)) and slot.params is not None:
            self._observe_reports(slot, packet.reports)
        return False  # receiver reports: aiortc keeps its statistics too

    def _observe_reports(self, slot: Slot, reports: list[Any]) -> None:
        """RTT (from LSR/DLSR) and jitter of what this m-line sent, for the metrics."""
        for report in reports:
            if report.ssrc != slot.params.ssrc:
                continue
            self.bandwidth.on_loss(report.fraction_lost / 256)
            self.stats.jitter_seconds.observe(report.jitter / 90000)
            if report.lsr:
                middle = (ntp_from_unix(time.time()) >> 16) & 0xFFFFFFFF
                rtt = ((middle - report.lsr - report.dlsr) & 0xFFFFFFFF) / 65536
                if rtt < 60:
                    self.stats.rtt_seconds.observe(rtt)

    def _sender_info(self, slot: Slot) -> hooks.SenderInfo | None:
        """What this m-line's sender report says (NTP, RTP timestamp, packets, octets); None
        before anything was sent on it."""
        consumer = slot.consumer
        report = consumer.sender_report(time.time(), time.monotonic()) if consumer else None
        if report is None:
            state = slot.state
            if state.last_time is None:
                return None
            elapsed = time.monotonic() - state.last_time
            report = (
                ntp_from_unix(time.time()),
                (state.max_ts + int(elapsed * 90000)) & 0xFFFFFFFF,
                state.packets & 0xFFFFFFFF,
                state.octets & 0xFFFFFFFF,
            )
        return report

    def _slot_report(self, slot: Slot, packets: list[Any]) -> None:
        """Fill the idle sender's SR with what this m-line really sent (aiortc's RTCP task)."""
        if not packets or not isinstance(packets[0], RtcpSrPacket):
            return
        report = self._sender_info(slot)
        if report is None:
            return
        ntp, rtp_ts, count, octets = report
        packets[0].sender_info = RtcpSenderInfo(
            ntp_timestamp=ntp, rtp_timestamp=rtp_ts, packet_count=count, octet_count=octets
        )

    # --- close ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the PC and every consumer on it."""
        if self.closed:
            return
        self.closed = True
        self.bandwidth.close()
        if self.rtcp_ingress is not None:
            self.rtcp_ingress.close()
        if self._reoffer_task is not None:
            self._reoffer_task.cancel()
        for slot in self.slots:
            if slot.consumer is not None:
                slot.consumer.close()
        pc, self.pc = self.pc, None
        if pc is not None:
            await pc.close()


__all__ = ["Slot", "SubscriberTransport", "set_msids"]
