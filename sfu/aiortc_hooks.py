"""Every aiortc/aioice private name the media plane touches, in one place.

Why this exists: aiortc has no forwarding API. To pass RTP through without decoding we take the
decrypted RTP from a publisher's DTLS transport, keep its receiver from reassembling frames, and
send rewritten packets with a subscriber's SRTP session straight to its socket, while the idle
aiortc sender of that subscriber keeps providing the SDP, SSRCs and RTCP routing. All of that is
private API, so it lives here behind small functions, and `check_private_api()` verifies at
start-up that the pinned aiortc/aioice still have every name (see pyproject.toml).
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable
from typing import Any

import aioice.ice
import aiortc.codecs
import aiortc.rtcrtpreceiver
from aiortc import RTCDtlsTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpSendParameters

RtpDataHandler = Callable[[bytes, int], Awaitable[None]]
RtcpPacketHandler = Callable[[Any], Awaitable[None]]

# (owner, attribute, what we use it for)
_PRIVATE_NAMES: tuple[tuple[Any, str, str], ...] = (
    (RTCDtlsTransport, "_handle_rtp_data", "publisher ingress hook (decrypted RTP)"),
    (RTCDtlsTransport, "_handle_rtcp_data", "RTCP dispatch"),
    (RTCRtpReceiver, "_handle_rtp_packet", "receiver statistics, NACK and REMB upstream"),
    (RTCRtpReceiver, "_handle_rtcp_packet", "publisher sender reports"),
    (RTCRtpReceiver, "_send_rtcp_pli", "keyframe requests to a publisher"),
    (RTCRtpSender, "_handle_rtcp_packet", "subscriber NACK/PLI/FIR/REMB/RR"),
    (RTCRtpSender, "_send_rtcp", "sender reports towards a subscriber"),
    (aioice.ice.Connection, "send", "ICE data path"),
    # simulcast (section at the end of this module)
    (RTCRtpReceiver, "_send_rtcp", "REMB towards a publisher, capped"),
    (aiortc.codecs, "HEADER_EXTENSIONS", "rid / repaired-rid header extensions negotiated"),
    (aiortc.rtcrtpreceiver, "NackGenerator", "one NACK generator per simulcast SSRC"),
)
# Instance attributes, checked on live objects by `check_private_api()`.
_DTLS_ATTRIBUTES = ("_tx_srtp", "_rx_srtp", "_rtp_router")
_RECEIVER_ATTRIBUTES = (
    "_RTCRtpReceiver__jitter_buffer",
    "_RTCRtpReceiver__rtcp_ssrc",
    # simulcast (section at the end of this module)
    "_RTCRtpReceiver__nack_generator",
    "_RTCRtpReceiver__rtx_ssrc",
)
_SENDER_ATTRIBUTES = ("_ssrc", "_rtx_ssrc", "_stream_id")
_CONNECTION_ATTRIBUTES = ("_nominated",)


def _qualname(owner: Any) -> str:
    return owner.__name__ if isinstance(owner, types.ModuleType) else f"{owner.__module__}.{owner.__name__}"


def check_private_api() -> None:
    """Raise RuntimeError naming every private aiortc/aioice attribute that is missing."""
    missing = [
        f"{_qualname(owner)}.{name} ({why})"
        for owner, name, why in _PRIVATE_NAMES
        if not hasattr(owner, name)
    ]
    try:
        from aiortc.rtcdtlstransport import RTCCertificate
        from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

        gatherer = RTCIceGatherer(iceServers=[])
        ice = RTCIceTransport(gatherer)
        dtls = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])
        connection = getattr(ice, "_connection", None)
        if connection is None:
            missing.append("aiortc.RTCIceTransport._connection (socket of a transport)")
        else:
            missing += [
                f"aioice.Connection.{a}"
                for a in _CONNECTION_ATTRIBUTES
                if not hasattr(connection, a)
            ]
        missing += [
            f"aiortc.RTCDtlsTransport.{a}" for a in _DTLS_ATTRIBUTES if not hasattr(dtls, a)
        ]
        missing += _live_sender_receiver_missing(dtls)
    except Exception as exc:  # building the probes failed: that is a broken API too
        missing.append(f"probe objects ({exc.__class__.__name__}: {exc})")
    if missing:
        raise RuntimeError(
            "meeting-sfu needs aiortc/aioice private names that this installation lacks; "
            "install the versions pinned in pyproject.toml. Missing: " + "; ".join(missing)
        )


def _live_sender_receiver_missing(dtls: RTCDtlsTransport) -> list[str]:
    missing: list[str] = []
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:
        # RTCRtpSender wants an event loop; build one for the probe only.
        probe_loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(probe_loop)
            sender = RTCRtpSender("video", dtls)
            receiver = RTCRtpReceiver("video", dtls)
        finally:
            asyncio.set_event_loop(None)
            probe_loop.close()
    else:
        sender = RTCRtpSender("video", dtls)
        receiver = RTCRtpReceiver("video", dtls)
    missing += [f"aiortc.RTCRtpSender.{a}" for a in _SENDER_ATTRIBUTES if not hasattr(sender, a)]
    missing += [
        f"aiortc.RTCRtpReceiver.{a}" for a in _RECEIVER_ATTRIBUTES if not hasattr(receiver, a)
    ]
    return missing


# --- publisher side --------------------------------------------------------------------------


class _NoReassembly:
    """Stands in for a receiver's jitter buffer: nothing is reassembled, so nothing is decoded."""

    __slots__ = ()

    def add(self, packet: Any) -> tuple[bool, None]:
        return False, None


def disable_reassembly(receiver: RTCRtpReceiver) -> None:
    """Keep the receiver's statistics/NACK/REMB work but never build frames for a decoder."""
    receiver._RTCRtpReceiver__jitter_buffer = _NoReassembly()  # type: ignore[attr-defined]


def hook_rtp_ingress(dtls: RTCDtlsTransport, on_rtp: Callable[[bytes], None]) -> None:
    """Call `on_rtp(decrypted_rtp)` for every RTP packet of the transport, then aiortc's own
    handling (receiver statistics, RR, NACK and REMB towards the publisher)."""
    original: RtpDataHandler = RTCDtlsTransport._handle_rtp_data.__get__(dtls)

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        on_rtp(data)
        await original(data, arrival_time_ms)

    dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]


def hook_receiver_rtcp(receiver: RTCRtpReceiver, on_rtcp: Callable[[Any], None]) -> None:
    """See each RTCP packet routed to a receiver (sender reports) before aiortc does."""
    original: RtcpPacketHandler = RTCRtpReceiver._handle_rtcp_packet.__get__(receiver)

    async def handle_rtcp_packet(packet: Any) -> None:
        on_rtcp(packet)
        await original(packet)

    receiver._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    await receiver._send_rtcp_pli(media_ssrc)


async def send_rtcp(receiver_or_sender: RTCRtpReceiver | RTCRtpSender, packet: Any) -> None:
    """Send one RTCP packet on the transport of a receiver or sender (errors ignored)."""
    try:
        await receiver_or_sender.transport._send_rtp(bytes(packet))
    except ConnectionError:
        pass


def receiver_rtcp_ssrc(receiver: RTCRtpReceiver) -> int | None:
    return receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]


# --- subscriber side -------------------------------------------------------------------------


class IdleTrack(MediaStreamTrack):
    """A track that never yields: the aiortc sender stays idle while we send RTP ourselves."""

    kind = "video"

    async def recv(self) -> Any:
        # Parked until the sender's task is cancelled (when the sender stops).
        return await asyncio.get_running_loop().create_future()


def set_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """The msid stream id aiortc writes for this sender's m-line."""
    sender._stream_id = stream_id


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    return sender._ssrc, sender._rtx_ssrc


def hook_sender_start(
    sender: RTCRtpSender, on_start: Callable[[RTCRtpSendParameters], None]
) -> None:
    """`on_start(parameters)` once aiortc starts the sender (DTLS is connected by then)."""
    original = sender.send

    async def send(parameters: RTCRtpSendParameters) -> None:
        await original(parameters)
        on_start(parameters)

    sender.send = send  # type: ignore[method-assign]


def hook_sender_rtcp(
    sender: RTCRtpSender, on_rtcp: Callable[[Any], bool]
) -> None:
    """`on_rtcp(packet)` sees each RTCP packet for the sender first; when it returns False,
    aiortc's own handling runs too (statistics from receiver reports)."""
    original: RtcpPacketHandler = RTCRtpSender._handle_rtcp_packet.__get__(sender)

    async def handle_rtcp_packet(packet: Any) -> None:
        if not on_rtcp(packet):
            await original(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


def hook_sender_reports(sender: RTCRtpSender, patch: Callable[[list[Any]], None]) -> None:
    """Let `patch(packets)` fill the sender report the idle sender emits every 0.5-1.5 s (its
    own counters stay zero since it never sends RTP itself)."""
    original = RTCRtpSender._send_rtcp.__get__(sender)

    async def send_rtcp_(packets: list[Any]) -> None:
        patch(packets)
        await original(packets)

    sender._send_rtcp = send_rtcp_  # type: ignore[method-assign]


class SendPath:
    """Encrypt-and-send for one subscriber transport: SRTP protect then one `sendto` on the
    nominated ICE pair's socket, skipping aiortc's awaited send chain (about 30 % cheaper)."""

    __slots__ = ("protect", "sendto", "addr")

    def __init__(self, protect: Callable[[bytes], bytes], sendto: Callable[..., None], addr: Any):
        self.protect = protect
        self.sendto = sendto
        self.addr = addr


def send_path(dtls: RTCDtlsTransport) -> SendPath | None:
    """The direct send path of a connected DTLS transport, or None when not connected."""
    srtp = dtls._tx_srtp
    if srtp is None or dtls.state != "connected":
        return None
    connection = dtls.transport._connection
    pair = connection._nominated.get(1)
    if pair is None or pair.protocol is None or pair.protocol.transport is None:
        return None
    return SendPath(srtp.protect, pair.protocol.transport.sendto, pair.remote_addr)


# --- simulcast (DESIGN §6.1) ------------------------------------------------------------------

_RID_URIS = (
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
)


def enable_rid_extensions() -> None:
    """Let aiortc negotiate the rid and repaired-rid header extensions on video m-lines
    (process-wide: aiortc has no per-PC list). Its answers then echo the offer's ids, which a
    browser needs to send simulcast; our forwarding writes only MID and abs-send-time, so
    subscribers are not affected."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters

    video = aiortc.codecs.HEADER_EXTENSIONS["video"]
    used = {e.id for e in video}
    for uri in _RID_URIS:
        if any(e.uri == uri for e in video):
            continue
        ext_id = next(i for i in range(1, 15) if i not in used)
        used.add(ext_id)
        video.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))


class _NackPerSsrc:
    """Stands in for a receiver's NACK generator when one receiver gets several simulcast
    layers: aiortc's generator tracks one highest sequence number, so mixed SSRCs would read as
    huge losses. One generator per SSRC, at most MAX_SSRCS (the oldest goes)."""

    MAX_SSRCS = 8
    __slots__ = ("_generators", "_last")

    def __init__(self) -> None:
        self._generators: dict[int, Any] = {}
        self._last: Any = None

    def add(self, packet: Any) -> bool:
        generator = self._generators.get(packet.ssrc)
        if generator is None:
            if len(self._generators) >= self.MAX_SSRCS:
                self._generators.pop(next(iter(self._generators)))
            generator = self._generators[packet.ssrc] = aiortc.rtcrtpreceiver.NackGenerator()
        self._last = generator
        return generator.add(packet)

    @property
    def missing(self) -> set[int]:
        """What aiortc reads right after `add` returned True: that SSRC's missing packets."""
        return self._last.missing if self._last is not None else set()


def nack_per_ssrc(receiver: RTCRtpReceiver) -> None:
    if receiver._RTCRtpReceiver__nack_generator is not None:  # type: ignore[attr-defined]
        receiver._RTCRtpReceiver__nack_generator = _NackPerSsrc()  # type: ignore[attr-defined]


def map_rtx_ssrc(receiver: RTCRtpReceiver, rtx_ssrc: int, media_ssrc: int) -> None:
    """Tell the receiver an RTX SSRC learnt from repaired-rid (aiortc knows only the SDP's FID
    groups), so it unwraps retransmissions and its NACK state sees them arrive."""
    table = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    if len(table) < 16 or rtx_ssrc in table:
        table[rtx_ssrc] = media_ssrc


def cap_remb(receiver: RTCRtpReceiver, max_bitrate: int) -> None:
    """REMB towards the publisher stays aiortc's own estimate of what it receives, but never
    above `max_bitrate` bits/s (the [media] caps)."""
    from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci, unpack_remb_fci

    original = RTCRtpReceiver._send_rtcp.__get__(receiver)

    async def send_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                bitrate, ssrcs = None, []
            if bitrate is not None and bitrate > max_bitrate:
                packet = RtcpPsfbPacket(
                    fmt=RTCP_PSFB_APP, ssrc=packet.ssrc, media_ssrc=packet.media_ssrc,
                    fci=pack_remb_fci(max_bitrate, ssrcs),
                )
        await original(packet)

    receiver._send_rtcp = send_rtcp  # type: ignore[method-assign]


__all__ = [
    "IdleTrack",
    "cap_remb",
    "enable_rid_extensions",
    "map_rtx_ssrc",
    "nack_per_ssrc",
    "SendPath",
    "check_private_api",
    "disable_reassembly",
    "hook_receiver_rtcp",
    "hook_rtp_ingress",
    "hook_sender_reports",
    "hook_sender_rtcp",
    "hook_sender_start",
    "receiver_rtcp_ssrc",
    "send_path",
    "send_pli",
    "send_rtcp",
    "set_stream_id",
]
