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
import contextlib
import contextvars
import heapq
import logging
import random
import secrets
import string
import struct
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import aioice.ice
import aioice.stun
import aiortc.codecs
import aiortc.rtcdtlstransport
import aiortc.rtcpeerconnection
import aiortc.rtcrtpreceiver
import aiortc.rtp
from aioice import Candidate
from aiortc import RTCDtlsTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters

if TYPE_CHECKING:
    from .udp_mux import UdpMux

RtpDataHandler = Callable[[bytes, int], Awaitable[None]]
RtcpPacketHandler = Callable[[Any], Awaitable[None]]

# aioice's per-socket STUN protocol (stands in as asyncio's base if gone: reported, not raised)
_StunProtocol: Any = getattr(aioice.ice, "StunProtocol", asyncio.DatagramProtocol)
# (owner, attribute, what we use it for); an owner is a class or a module
_PRIVATE_NAMES: tuple[tuple[Any, str, str], ...] = (
    (RTCDtlsTransport, "_handle_rtp_data", "publisher ingress hook (decrypted RTP)"),
    (RTCDtlsTransport, "_handle_rtcp_data", "RTCP dispatch"),
    (RTCRtpReceiver, "_handle_rtp_packet", "receiver statistics, NACK and REMB upstream"),
    (RTCRtpReceiver, "_handle_rtcp_packet", "publisher sender reports"),
    (RTCRtpReceiver, "_send_rtcp_pli", "keyframe requests to a publisher"),
    (RTCRtpSender, "_handle_rtcp_packet", "subscriber NACK/PLI/FIR/REMB/RR"),
    (RTCRtpSender, "_send_rtcp", "sender reports towards a subscriber"),
    (RTCRtpSender, "_run_rtcp", "sender reports in batches"),
    (aiortc.rtcdtlstransport.RtpRouter, "route_rtcp", "the lean RTCP path of subscribers"),
    (aioice.ice.Connection, "send", "ICE data path"),
    (aioice.ice, "get_host_addresses", "host candidates on the configured addresses only"),
    (aioice.ice.Connection, "get_component_candidates", "server ICE on the shared UDP sockets"),
    (aioice.ice.Connection, "query_consent", "consent freshness as RFC 7675 words it"),
    (aioice.ice, "CONSENT_INTERVAL", "consent freshness as RFC 7675 words it"),
    (aioice.ice, "CONSENT_FAILURES", "consent freshness as RFC 7675 words it"),
    (aioice.ice.Connection, "data_received", "DTLS/SRTP from a shared socket to its connection"),
    (aioice.ice, "StunProtocol", "a connection's endpoint on a shared socket"),
    (_StunProtocol, "datagram_received", "STUN from a shared socket"),
    (_StunProtocol, "send_stun", "learning a connection's remote addresses"),
    (aioice.ice, "candidate_foundation", "host candidates on a shared socket"),
    (aioice.ice, "candidate_priority", "host candidates on a shared socket"),
    (aiortc.rtcpeerconnection, "find_common_codecs", "the publisher codec choice"),
    (aiortc.codecs, "CODECS", "the publisher codec choice"),
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
    "_RTCRtpReceiver__remote_bitrate_estimator",
    # simulcast (section at the end of this module)
    "_RTCRtpReceiver__nack_generator",
    "_RTCRtpReceiver__rtx_ssrc",
)
_SENDER_ATTRIBUTES = (
    "_ssrc", "_rtx_ssrc", "_stream_id",
    # sender reports in batches (batch_sender_reports)
    "_RTCRtpSender__rtcp_started", "_RTCRtpSender__rtcp_exited", "_RTCRtpSender__cname", "_RTCRtpSender__lsr",
    "_RTCRtpSender__lsr_time",
)
_CONNECTION_ATTRIBUTES = ("_nominated", "_protocols", "_local_username", "_query_consent_task")


def check_private_api() -> None:
    """Raise RuntimeError naming every private aiortc/aioice attribute that is missing."""
    missing = [
        f"{_qualname(owner)}.{name} ({why})"
        for owner, name, why in _PRIVATE_NAMES
        if not _has(owner, name)
    ]
    missing += [f"{name} (replaced by meeting-sfu)" for name, v in _AIOICE_ORIGINALS.items() if v is None]
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
        missing += _srtp_missing()
        missing += _lean_missing()
    except Exception as exc:  # building the probes failed: that is a broken API too
        missing.append(f"probe objects ({exc.__class__.__name__}: {exc})")
    if missing:
        raise RuntimeError(
            "meeting-sfu needs aiortc/aioice private names that this installation lacks; "
            "install the versions pinned in pyproject.toml. Missing: " + "; ".join(missing)
        )


def _has(owner: Any, name: str) -> bool:
    """Whether aiortc/aioice itself defines `name` on `owner` (a method inherited from asyncio's
    base classes would not be the one the hooks rely on)."""
    if not isinstance(owner, type):
        return hasattr(owner, name)
    package = owner.__module__.partition(".")[0]
    return any(name in vars(k) for k in owner.__mro__ if k.__module__.partition(".")[0] == package)


def _qualname(owner: Any) -> str:
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__name__}"
    return owner.__name__  # a module


def private_names() -> list[str]:
    """Every private name `check_private_api()` checks (the hooks use exactly these)."""
    names = [f"{_qualname(owner)}.{name}" for owner, name, _ in _PRIVATE_NAMES]
    names += ["aiortc.RTCIceTransport._connection"]
    names += [f"aioice.Connection.{a}" for a in _CONNECTION_ATTRIBUTES]
    names += [f"aiortc.RTCDtlsTransport.{a}" for a in _DTLS_ATTRIBUTES]
    names += [f"aiortc.RTCRtpSender.{a}" for a in _SENDER_ATTRIBUTES]
    names += [f"aiortc.RTCRtpReceiver.{a}" for a in _RECEIVER_ATTRIBUTES]
    names += ["pylibsrtp._binding.lib.srtp_protect", "pylibsrtp._binding.lib.srtp_unprotect", "pylibsrtp.Session._srtp"]
    # the lean receive path (LeanIngress)
    names += [f"aiortc.RTCRtpReceiver.{a}" for a in _RECEIVER_LEAN_ATTRIBUTES]
    names += [f"aiortc.RTCDtlsTransport.{a}" for a in _DTLS_LEAN_ATTRIBUTES]
    names += [f"aiortc.rtcrtpreceiver.StreamStatistics.{a}" for a in _STATISTICS_ATTRIBUTES if a.startswith("_")]
    names += [
        "aiortc.rtp.HeaderExtensionsMap.__ids",
        "aiortc.rtcdtlstransport.RtpRouter.ssrc_table",
        "aioice.Connection._queue",
    ]
    return names


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
        f"aiortc.RTCRtpReceiver.{a}"
        for a in _RECEIVER_ATTRIBUTES + _RECEIVER_LEAN_ATTRIBUTES
        if not hasattr(receiver, a)
    ]
    return missing


# --- ICE: host addresses and the shared UDP sockets ------------------------------------------

# Taken at import, before any override: `check_private_api()` reports them if aioice lacks them
# (the override itself would otherwise make them look present).
_AIOICE_HOST_ADDRESSES = getattr(aioice.ice, "get_host_addresses", None)
_AIOICE_COMPONENT_CANDIDATES = getattr(aioice.ice.Connection, "get_component_candidates", None)
_AIOICE_ORIGINALS = {
    "aioice.ice.get_host_addresses": _AIOICE_HOST_ADDRESSES,
    "aioice.ice.Connection.get_component_candidates": _AIOICE_COMPONENT_CANDIDATES,
    "aioice.ice.Connection.query_consent": getattr(aioice.ice.Connection, "query_consent", None),
}
# Set only while a server PC gathers (sfu.peer.local_sdp): its connections then use the shared
# sockets; client PCs of the same process (tests, the load generator) keep their own sockets.
_shared_muxes: contextvars.ContextVar[Sequence[UdpMux] | None] = contextvars.ContextVar(
    "meeting_sfu_shared_muxes", default=None
)
_UFRAG_CHARS = string.ascii_letters + string.digits


def set_host_addresses(lookup: Callable[[bool, bool], list[str]] | None) -> None:
    """Replace aioice's host address lookup (process-wide; aioice has no per-connection
    option); None restores aioice's own."""
    aioice.ice.get_host_addresses = lookup or _AIOICE_HOST_ADDRESSES


def default_host_addresses() -> list[str]:
    """The addresses aioice itself would gather on (every interface but loopback)."""
    if _AIOICE_HOST_ADDRESSES is None:  # check_private_api() reports it
        return []
    return _AIOICE_HOST_ADDRESSES(use_ipv4=True, use_ipv6=True)


def install_shared_ice() -> None:
    """Let connections gathering inside `shared_ice()` use the shared sockets (idempotent)."""
    if _AIOICE_COMPONENT_CANDIDATES is not None:  # else check_private_api() stops start-up
        aioice.ice.Connection.get_component_candidates = _get_component_candidates


@contextlib.contextmanager
def shared_ice(muxes: Sequence[UdpMux]) -> Iterator[None]:
    """ICE connections gathering in this context (and tasks it starts) use `muxes`."""
    token = _shared_muxes.set(muxes)
    try:
        yield
    finally:
        _shared_muxes.reset(token)


class _SharedTransport:
    """A StunProtocol's transport on a shared socket: `sendto` IS the socket's own (the fast
    send path stays one call), `close()` detaches the connection from the mux only."""

    __slots__ = ("sendto", "_mux", "_protocol", "_closing")

    def __init__(self, mux: UdpMux, protocol: _SharedStunProtocol) -> None:
        self.sendto = mux.sendto
        self._mux = mux
        self._protocol = protocol
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._mux.address if name == "sockname" else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._mux.detach(self._protocol)
            self._protocol.connection_lost(None)

    abort = close


class _SharedStunProtocol(_StunProtocol):
    """One ICE connection's endpoint on a shared socket (see sfu.udp_mux.Endpoint)."""

    def __init__(self, connection: aioice.ice.Connection, mux: UdpMux, component: int) -> None:
        super().__init__(connection)
        self.deliver = connection.data_received
        self.component = component
        self._mux = mux

    def send_stun(self, message: aioice.stun.Message, addr: tuple[str, int]) -> None:
        # A check we send (or a consent request) expects its answer from `addr`; a success
        # answer means `addr` proved it knows this connection's password.
        kind = message.message_class
        if kind == aioice.stun.Class.REQUEST:
            self._mux.learn(addr, self, verified=False)
        elif kind == aioice.stun.Class.RESPONSE:
            self._mux.learn(addr, self, verified=True)
        super().send_stun(message, addr)


async def _get_component_candidates(
    self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
) -> list[Candidate]:
    muxes = _shared_muxes.get()
    if muxes is None:
        return await _AIOICE_COMPONENT_CANDIDATES(self, component, addresses, timeout)
    # The ufrag is what finds this connection on the shared sockets: it must be unique there.
    # Gathering runs before aiortc writes the SDP, so a new one is what the SDP will carry.
    while any(mux.ufrag_taken(self.local_username) for mux in muxes):
        self._local_username = "".join(secrets.choice(_UFRAG_CHARS) for _ in range(8))
    candidates = []
    for mux in muxes:
        protocol = _SharedStunProtocol(self, mux, component)
        protocol.connection_made(_SharedTransport(mux, protocol))  # type: ignore[arg-type]
        host, port = mux.address
        protocol.local_candidate = Candidate(
            foundation=aioice.ice.candidate_foundation("host", "udp", host),
            component=component,
            transport="udp",
            priority=aioice.ice.candidate_priority(component, "host"),
            host=host,
            port=port,
            type="host",
        )
        mux.attach(self.local_username, protocol)
        self._protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    return candidates


# --- ICE: consent freshness ------------------------------------------------------------------

# A consent check may be answered this late: aioice's STUN timers retransmit it after 0.5, 1.5
# and 3.5 s and give up at 7.5 s, which is longer than the ~5 s between checks.
CONSENT_RETRANSMISSIONS = 3
_consent_log = logging.getLogger("meeting_sfu.sfu.ice")


def install_consent_freshness() -> None:
    """Every ICE connection of the process checks consent as RFC 7675 words it (idempotent).

    aioice gives each check 0.5 s and no retransmission, and expires consent after 6 checks in
    a row went unanswered in time: on a loaded node (every check answered 0.6 s late for 30 s,
    by either side's event loop) every connection of the node is closed at once, although
    both ends still answer. RFC 7675 section 5.1 expires consent only when no check sent in
    the last 30 s has been answered: here a check lives 7.5 s, and consent expires when none
    was answered for CONSENT_INTERVAL * CONSENT_FAILURES (30 s)."""
    if _AIOICE_ORIGINALS["aioice.ice.Connection.query_consent"] is not None:  # else check_private_api()
        aioice.ice.Connection.query_consent = _query_consent


async def _query_consent(self: aioice.ice.Connection) -> None:
    assert self.remote_password is not None  # consent checks start once connect() has it
    loop = asyncio.get_running_loop()
    interval = aioice.ice.CONSENT_INTERVAL
    expiry = interval * aioice.ice.CONSENT_FAILURES
    key = self.remote_password.encode("utf8")
    answered = [loop.time()]
    pending: set[asyncio.Future[None]] = set()  # at most 2 per nominated pair (7.5 s vs >= 4 s)

    async def check(pair: Any) -> None:
        try:
            await pair.protocol.request(
                self.build_request(pair, nominate=False),
                pair.remote_addr,
                integrity_key=key,
                retransmissions=CONSENT_RETRANSMISSIONS,
            )
        except (aioice.stun.TransactionError, OSError):
            return
        answered[0] = loop.time()

    try:
        while True:
            await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
            if loop.time() - answered[0] >= expiry:
                _consent_log.info("ice consent expired unanswered_seconds=%.1f", loop.time() - answered[0])
                self._query_consent_task = None  # close() must not cancel the task it runs in
                await self.close()
                return
            for pair in list(self._nominated.values()):
                if len(pending) < 8:
                    task = asyncio.ensure_future(check(pair))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
    finally:
        for task in list(pending):
            task.cancel()


# --- codecs ----------------------------------------------------------------------------------


def common_video_codecs(offered: list[RTCRtpCodecParameters]) -> list[RTCRtpCodecParameters]:
    """The offered video codecs aiortc supports, in the offer's order and payload types."""
    return aiortc.rtcpeerconnection.find_common_codecs(aiortc.codecs.CODECS["video"], offered)


# --- publisher side --------------------------------------------------------------------------


class _NoReassembly:
    """Stands in for a receiver's jitter buffer: nothing is reassembled, so nothing is decoded."""

    __slots__ = ()

    def add(self, packet: Any) -> tuple[bool, None]:
        return False, None


def disable_reassembly(receiver: RTCRtpReceiver) -> None:
    """Keep the receiver's statistics/NACK/REMB work but never build frames for a decoder."""
    receiver._RTCRtpReceiver__jitter_buffer = _NoReassembly()  # type: ignore[attr-defined]


def idle_receiver(receiver: RTCRtpReceiver) -> None:
    """A receiver that never gets media (a subscriber's sendonly m-line): without its bitrate
    estimator (1000 one-millisecond buckets, about 90 kB per m-line) and its jitter buffer.
    Both are optional in aiortc's receive path, should a client send RTP anyway."""
    receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]
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
    nominated ICE pair's socket, skipping aiortc's awaited send chain (about 30 % cheaper).
    For the compiled fast path (sfu.fastpath) also the SRTP session itself and a duplicate of
    the shared socket's descriptor (None when the pair is not on a shared socket)."""

    __slots__ = ("protect", "sendto", "addr", "srtp", "fd")

    def __init__(
        self,
        protect: Callable[[bytes], bytes],
        sendto: Callable[..., None],
        addr: Any,
        srtp: Any = None,
        fd: Any = None,
    ):
        self.protect = protect
        self.sendto = sendto
        self.addr = addr
        self.srtp = srtp
        self.fd = fd


def send_path(dtls: RTCDtlsTransport) -> SendPath | None:
    """The direct send path of a connected DTLS transport, or None when not connected."""
    srtp = dtls._tx_srtp
    if srtp is None or dtls.state != "connected":
        return None
    connection = dtls.transport._connection
    pair = connection._nominated.get(1)
    if pair is None or pair.protocol is None or pair.protocol.transport is None:
        return None
    fd = pair.protocol._mux.send_fd() if isinstance(pair.protocol, _SharedStunProtocol) else None
    return SendPath(srtp.protect, pair.protocol.transport.sendto, pair.remote_addr, srtp, fd)


# --- pylibsrtp: libsrtp's own srtp_protect for the compiled fast path --------------------------


def srtp_protect_address(name: str = "srtp_protect") -> int:
    """The address of libsrtp 2.x's `srtp_protect(srtp_t, void *, int *)` inside pylibsrtp (the
    fast path calls it on aiortc's own sessions: no second libsrtp in the process); with
    name="srtp_unprotect", that of `srtp_unprotect` (the same signature; the lean receive path)."""
    from pylibsrtp._binding import ffi, lib

    function = ffi.addressof(lib, name)
    if ffi.typeof(function).cname != _SRTP_PROTECT_TYPE:
        raise RuntimeError(f"{name} is {ffi.typeof(function).cname}, not {_SRTP_PROTECT_TYPE}")
    return int(ffi.cast("uintptr_t", function))


def srtp_context(session: Any) -> int:
    """The `srtp_t` of a pylibsrtp Session (valid while the session lives)."""
    from pylibsrtp._binding import ffi

    return int(ffi.cast("uintptr_t", session._srtp[0]))


_SRTP_PROTECT_TYPE = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"


def _srtp_missing() -> list[str]:
    try:
        import pylibsrtp
        from pylibsrtp._binding import ffi, lib

        for name in ("srtp_protect", "srtp_unprotect", "srtp_protect_rtcp", "srtp_unprotect_rtcp"):
            if not hasattr(lib, name):
                return [f"pylibsrtp._binding.lib.{name} (the compiled fast path)"]
            cname = ffi.typeof(ffi.addressof(lib, name)).cname
            if cname != _SRTP_PROTECT_TYPE:
                return [f"pylibsrtp._binding.lib.{name} as {_SRTP_PROTECT_TYPE} (is {cname})"]
        if not hasattr(pylibsrtp.Session(), "_srtp"):
            return ["pylibsrtp.Session._srtp (the compiled fast path)"]
    except Exception as exc:
        return [f"pylibsrtp internals ({exc.__class__.__name__}: {exc})"]
    return []


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
    generator = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
    if generator is not None and not isinstance(generator, NackTracker):  # that one is per SSRC
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
    "LeanIngress",
    "NackTracker",
    "count_rtp",
    "lean_ingress",
    "idle_receiver",
    "cap_remb",
    "enable_rid_extensions",
    "map_rtx_ssrc",
    "nack_per_ssrc",
    "SendPath",
    "check_private_api",
    "common_video_codecs",
    "default_host_addresses",
    "disable_reassembly",
    "hook_receiver_rtcp",
    "hook_rtp_ingress",
    "hook_sender_reports",
    "hook_sender_rtcp",
    "hook_sender_start",
    "batch_sender_reports",
    "lean_rtcp",
    "RtcpIngress",
    "SenderReports",
    "sender_reports",
    "install_consent_freshness",
    "install_shared_ice",
    "private_names",
    "receiver_rtcp_ssrc",
    "send_path",
    "send_pli",
    "send_rtcp",
    "set_host_addresses",
    "srtp_context",
    "srtp_protect_address",
    "set_stream_id",
    "shared_ice",
]


# --- publisher lean receive path ---------------------------------------------------------------
#
# aiortc receives each SRTP datagram through aioice's queue, a task wakeup of the DTLS transport,
# pylibsrtp, RtpPacket.parse and RTCRtpReceiver._handle_rtp_packet (bitrate estimator, receive
# statistics, RTX unwrapping, NACK generator, depayloading, jitter buffer). For a publisher's RTP
# the shared socket's demultiplexer hands the datagram to `LeanIngress` instead, which does in one
# call what of that the publisher relies on, on aiortc's own objects: the same SRTP session, the
# receiver's statistics objects (its RTCP task keeps sending the receiver reports from them), its
# bitrate estimator (REMB, capped by `cap_remb`), its RTX table and a NACK tracker that aiortc's
# path shares (`NackTracker`). Nothing is depayloaded or reassembled (nothing is decoded). What
# it is not sure about goes aiortc's way: RTCP, DTLS, a datagram behind others still queued (the
# order is kept), an SSRC aiortc's router has not bound to the receiver yet (its first packets
# teach the router, which routes sender reports by SSRC), an unknown payload type.

_RECEIVER_LEAN_ATTRIBUTES = (
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__remote_streams",
    "_enabled",
)
_DTLS_LEAN_ATTRIBUTES = (
    "_RTCDtlsTransport__rx_packets",
    "_RTCDtlsTransport__rx_bytes",
    "_RTCDtlsTransport__tx_packets",
    "_RTCDtlsTransport__tx_bytes",
    "_rtp_header_extensions_map",
)
_STATISTICS_ATTRIBUTES = (
    "base_seq", "max_seq", "cycles", "packets_received", "_clockrate", "_jitter_q4", "_last_arrival",
    "_last_timestamp",
)
_NTP_MS = 2208988800 * 1000  # aiortc's arrival times are NTP milliseconds (aiortc.clock.current_ms)
# Packets of one SSRC sent within this of the first of their group (abs-send-time units, 2^-18 s:
# 4 ms) reach the bitrate estimator as one packet (their latest arrival and send time, their
# bytes), given when the next group starts (`GroupedEstimate`). Its inter-arrival filter keeps
# exactly the same groups (it starts a new one only past 5 ms of send time), so its deltas and
# its overuse detector do not change; the incoming rate it measures counts a group's later
# packets one group late (its REMB values follow within a few percent), and while overusing it
# asks for a REMB once per group, not once per packet. It runs about twice per frame instead of
# once per packet.
GROUP_WINDOW = 4 * (1 << 18) // 1000
NACK_HISTORY = aiortc.rtp.RTP_HISTORY_SIZE if hasattr(aiortc.rtp, "RTP_HISTORY_SIZE") else 128


class _SsrcNack:
    __slots__ = ("max_seq", "missing")

    def __init__(self) -> None:
        self.max_seq = -1
        self.missing: set[int] = set()


class NackTracker:
    """The NACK state of a publisher's receiver, per media SSRC (at most MAX_SSRCS, the oldest
    goes), as aiortc's NackGenerator keeps it: the packets missing behind the highest sequence
    number, within the last NACK_HISTORY. It stands in for the receiver's generator, so aiortc's
    path (`add`, `missing`) and the lean path (`seen`) share it."""

    MAX_SSRCS = 8
    __slots__ = ("_states", "_last")

    def __init__(self) -> None:
        self._states: dict[int, _SsrcNack] = {}
        self._last: _SsrcNack | None = None

    def add(self, packet: Any) -> bool:  # aiortc's receiver
        return self.seen(packet.ssrc, packet.sequence_number)

    @property
    def missing(self) -> set[int]:
        """What aiortc reads right after `add` returned True: that SSRC's missing packets."""
        return self._last.missing if self._last is not None else set()

    def missing_of(self, ssrc: int) -> set[int]:
        state = self._states.get(ssrc)
        return state.missing if state is not None else set()

    def seen(self, ssrc: int, seq: int) -> bool:
        """Packet `seq` of `ssrc` arrived; True when it revealed newly missing packets."""
        state = self._states.get(ssrc)
        if state is None:
            if len(self._states) >= self.MAX_SSRCS:
                self._states.pop(next(iter(self._states)))
            state = self._states[ssrc] = _SsrcNack()
        self._last = state
        top = state.max_seq
        if top < 0:
            state.max_seq = seq
            return False
        delta = (seq - top) & 0xFFFF
        missing = state.missing
        if delta >= 0x8000 or delta == 0:  # older (a retransmission, reordering) or a duplicate
            missing.discard(seq)
            return False
        state.max_seq = seq
        if delta > 1:
            for k in range(max(1, delta - NACK_HISTORY), delta):
                missing.add((top + k) & 0xFFFF)
        if missing:
            for old in [s for s in missing if (seq - s) & 0xFFFF > NACK_HISTORY]:
                missing.discard(old)
        return delta > 1


def count_rtp(stats: Any, seq: int, ts: int, arrival: int) -> None:
    """aiortc's StreamStatistics.add for one packet, from header fields (`arrival` in clock
    ticks of the stream: time.time() * clock rate, as aiortc takes it)."""
    stats.packets_received += 1
    top = stats.max_seq
    if stats.base_seq is None:
        stats.base_seq = seq
    if top is None or (seq != top and (seq - top) & 0xFFFF < 0x8000):  # in order (uint16_gt)
        if top is not None and seq < top:
            stats.cycles += 1 << 16
        stats.max_seq = seq
        last_ts = stats._last_timestamp
        if ts != last_ts and stats.packets_received > 1:
            diff = abs((arrival - stats._last_arrival) - (ts - last_ts))
            stats._jitter_q4 += diff - ((stats._jitter_q4 + 8) >> 4)
        stats._last_arrival = arrival
        stats._last_timestamp = ts


class GroupedEstimate:
    """Feeds aiortc's RemoteBitrateEstimator once per group of packets (GROUP_WINDOW): the
    group's first packet as it comes, the rest as one packet when the next group starts."""

    __slots__ = ("group_abs", "group_ssrc", "held")

    def __init__(self) -> None:
        self.group_abs = 0  # send time of the current group's first packet
        self.group_ssrc = -1
        self.held: list[int] | None = None  # latest arrival, latest send time, bytes since the first

    def __call__(self, estimator: Any, arrival: int, abs_time: int, size: int, ssrc: int) -> Any:
        """What `estimator.add(arrival, abs_time, size, ssrc)` would return by now (a REMB or None)."""
        if ssrc == self.group_ssrc and ((abs_time - self.group_abs) & 0xFFFFFF) <= GROUP_WINDOW:
            held = self.held
            if held is None:
                self.held = [arrival, abs_time, size]
            else:
                held[0] = arrival
                if ((abs_time - held[1]) & 0xFFFFFF) < 0x800000:  # the group's latest send time
                    held[1] = abs_time
                held[2] += size
            return None
        remb = None
        held = self.held
        if held is not None:
            self.held = None
            remb = estimator.add(held[0], held[1], held[2], self.group_ssrc)
        self.group_abs, self.group_ssrc = abs_time, ssrc
        return estimator.add(arrival, abs_time, size, ssrc) or remb


class LeanIngress:
    """The lean receive path of one publisher connection (see the section comment). It is the
    `deliver` of the connection's endpoints on the shared sockets; `fallback` is aioice's own."""

    MAX_SSRCS = 16
    __slots__ = (
        "dtls", "receiver", "on_rtp", "fallback", "queue_empty", "srtp", "key", "unprotect", "ssrcs", "kinds",
        "clocks",
        "abs_id", "max_bitrate", "packets", "fallbacks", "failures", "_path", "estimate", "__weakref__",
    )

    def __init__(self, dtls: RTCDtlsTransport, receiver: RTCRtpReceiver, on_rtp: Callable[[bytes], None],
                 fallback: Callable[[bytes, int], None], queue_empty: Callable[[], bool],
                 max_bitrate: int) -> None:
        self.dtls = dtls
        self.receiver = receiver
        self.on_rtp = on_rtp
        self.fallback = fallback
        self.queue_empty = queue_empty
        self.srtp: Any = None  # the receiving SRTP session while DTLS is connected
        # unprotect(key, data) -> bytes | None: libsrtp's srtp_unprotect called from C on the
        # session's srtp_t (sfu.fastpath), or pylibsrtp's wrapper on the session
        self.key: Any = None
        self.unprotect: Callable[[Any, bytes], bytes | None] = _unprotect_python
        self.ssrcs: set[int] = set()  # SSRCs aiortc's router sends to this receiver
        self.kinds: dict[int, int] = {}  # payload type -> -1 (media) or the RTX's apt
        self.clocks: dict[int, int] = {}
        self.abs_id = 0
        self.max_bitrate = max_bitrate  # REMB cap, as cap_remb applies it on aiortc's path
        self.packets = 0  # received through this path
        self.fallbacks = 0  # SRTP handed to aiortc's path
        self.failures = 0  # SRTP that did not unprotect (dropped, as aiortc drops them)
        self._path: SendPath | None = None  # where RTCP to the publisher goes (nominated pair)
        self.estimate = GroupedEstimate()  # the receiver's bitrate estimator, fed per group

    def state_changed(self) -> None:
        from . import fastpath

        _take_receive_session(self, fastpath.unprotect, _unprotect_python)
        self._path = None  # found again on the first RTCP (the nominated pair is known by then)

    def __call__(self, data: bytes, component: int) -> None:
        srtp = self.srtp
        if (
            srtp is None
            or data[0] < 128  # DTLS
            or 191 < data[1] < 209  # RTCP (aiortc's test)
            or len(data) < 12
            or not self.queue_empty()  # keep the order of what aiortc still has to read
        ):
            if srtp is not None and data[0] > 127:
                self.fallbacks += 1
            self.fallback(data, component)
            return
        pt = data[1] & 0x7F
        ssrc = data[8] << 24 | data[9] << 16 | data[10] << 8 | data[11]
        apt = self.kinds.get(pt)
        if apt is None or ssrc not in self.ssrcs:
            if not self._learn(ssrc):
                self.fallbacks += 1
                self.fallback(data, component)
                return
            apt = self.kinds.get(pt)
            if apt is None:
                self.fallbacks += 1
                self.fallback(data, component)
                return
        plain = self.unprotect(self.key, data)
        if plain is None:  # authentication, replay: aiortc drops these too
            self.failures += 1
            return
        try:
            self._receive(plain, ssrc, pt, apt)
        except Exception:  # never into the socket's callback
            logging.getLogger("meeting_sfu.sfu.ingress").exception("lean receive failed")

    def _learn(self, ssrc: int) -> bool:
        """Whether aiortc routes `ssrc` to this receiver (which has started)."""
        receiver = self.receiver
        if not self.kinds:
            codecs = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
            if not codecs:
                return False
            for pt, codec in codecs.items():
                apt = codec.parameters.get("apt") if codec.name.lower() == "rtx" else -1
                if isinstance(apt, int) and (apt == -1 or apt in codecs):
                    self.kinds[pt] = apt
                    self.clocks[pt] = codec.clockRate
            ids = self.dtls._rtp_header_extensions_map._HeaderExtensionsMap__ids  # type: ignore[attr-defined]
            self.abs_id = ids.abs_send_time or 0
        if self.dtls._rtp_router.ssrc_table.get(ssrc) is not receiver:
            return False
        if len(self.ssrcs) >= self.MAX_SSRCS:
            self.ssrcs.clear()
        self.ssrcs.add(ssrc)
        return True

    def _receive(self, data: bytes, ssrc: int, pt: int, apt: int) -> None:
        """What RTCDtlsTransport and RTCRtpReceiver do with one decrypted RTP packet, but the
        frame reassembly (see the section comment)."""
        self.packets += 1
        dtls = self.dtls
        dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
        self.on_rtp(data)
        receiver = self.receiver
        if not receiver._enabled:
            return
        n = len(data)
        b0 = data[0]
        offset = 12 + (b0 & 0x0F) * 4
        abs_time = -1
        if b0 & 0x10:
            if offset + 4 > n:
                return
            end = offset + 4 + ((data[offset + 2] << 8) | data[offset + 3]) * 4
            if end > n:
                return
            if self.abs_id and data[offset] == 0xBE and data[offset + 1] == 0xDE:
                abs_time = _one_byte_abs(data, offset + 4, end, self.abs_id)
            offset = end
        elif offset > n:
            return
        now = time.time()
        estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
        if estimator is not None and abs_time >= 0:
            remb = self.estimate(estimator, int(now * 1000) + _NTP_MS, abs_time, n - offset, ssrc)
            rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
            if remb is not None and rtcp_ssrc is not None:
                bitrate, ssrcs = remb
                fci = aiortc.rtp.pack_remb_fci(min(bitrate, self.max_bitrate), ssrcs)
                rtp = aiortc.rtp
                self._send_rtcp(rtp.RtcpPsfbPacket(fmt=rtp.RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci))
        streams = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        stats = streams.get(ssrc)
        clock = self.clocks[pt]
        if stats is None:
            stats = streams[ssrc] = aiortc.rtcrtpreceiver.StreamStatistics(clock)
        seq = data[2] << 8 | data[3]
        count_rtp(stats, seq, data[4] << 24 | data[5] << 16 | data[6] << 8 | data[7], int(now * clock))
        if apt >= 0:  # RTX: the NACK state sees the original packet arrive
            media_ssrc = receiver._RTCRtpReceiver__rtx_ssrc.get(ssrc)  # type: ignore[attr-defined]
            if media_ssrc is None:
                return
            if b0 & 0x20:
                n -= data[-1]
            if n - offset < 2:
                return
            seq = data[offset] << 8 | data[offset + 1]
            ssrc = media_ssrc
        nack = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        if nack is not None and nack.seen(ssrc, seq):
            rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
            if rtcp_ssrc is not None:
                packet = aiortc.rtp.RtcpRtpfbPacket(fmt=aiortc.rtp.RTCP_RTPFB_NACK, ssrc=rtcp_ssrc, media_ssrc=ssrc)
                packet.lost = sorted(nack.missing_of(ssrc))
                self._send_rtcp(packet)

    def _send_rtcp(self, packet: Any) -> None:
        """Send one RTCP packet to the publisher now: what aiortc's RTCRtpReceiver._send_rtcp
        does (SRTCP protect, one datagram on the nominated pair), without a task per packet."""
        dtls = self.dtls
        tx = dtls._tx_srtp
        if tx is None or self.srtp is None:
            return
        path = self._path
        if path is None:
            path = self._path = send_path(dtls)
            if path is None:
                return
        try:
            data = tx.protect_rtcp(bytes(packet))
            path.sendto(data, path.addr)
        except Exception as exc:  # as aiortc's send ignores a connection error
            logging.getLogger("meeting_sfu.sfu.ingress").debug("rtcp to a publisher failed: %s", exc)
            return
        dtls._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__tx_bytes += len(data)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.srtp = self.key = None
        self._path = None


def _take_receive_session(path: Any, compiled: Any, python: Callable[[Any, bytes], bytes | None]) -> None:
    """Give a lean path (`srtp`, `key`, `unprotect`) its DTLS transport's receiving SRTP session
    while connected: unprotected by `compiled` on the session's srtp_t, else by `python`."""
    dtls = path.dtls
    srtp = dtls._rx_srtp if dtls.state == "connected" else None
    if srtp is not None and srtp is not path.srtp:
        path.key, path.unprotect = srtp, python
        if compiled is not None:
            try:
                path.key, path.unprotect = srtp_context(srtp), compiled
            except Exception:  # a pylibsrtp without Session._srtp: its wrapper does it
                pass
    path.srtp = srtp


def _unprotect_python(session: Any, data: bytes) -> bytes | None:
    try:
        return session.unprotect(data)
    except Exception:  # pylibsrtp.Error (authentication, replay), ValueError (too long)
        return None


def _one_byte_abs(data: bytes, i: int, end: int, ext_id: int) -> int:
    """The abs-send-time value in a one-byte-header extension block, -1 when absent."""
    while i < end:
        byte = data[i]
        if byte == 0:
            i += 1
            continue
        xid = byte >> 4
        if xid == 15:
            return -1
        size = (byte & 0x0F) + 1
        if xid == ext_id:
            if size != 3 or i + 4 > end:
                return -1
            return data[i + 1] << 16 | data[i + 2] << 8 | data[i + 3]
        i += 1 + size
    return -1


def lean_ingress(dtls: RTCDtlsTransport, receiver: RTCRtpReceiver,
                 on_rtp: Callable[[bytes], None], max_bitrate: int) -> LeanIngress | None:
    """Give a publisher connection the lean receive path on the shared sockets (None when its
    ICE does not run on them). Its NACK generator becomes a `NackTracker`, shared by both paths."""
    connection = dtls.transport._connection
    protocols = [p for p in connection._protocols if isinstance(p, _SharedStunProtocol)]
    if not protocols:
        return None
    if receiver._RTCRtpReceiver__nack_generator is not None:  # type: ignore[attr-defined]
        receiver._RTCRtpReceiver__nack_generator = NackTracker()  # type: ignore[attr-defined]
    ingress = LeanIngress(dtls, receiver, on_rtp, connection.data_received, connection._queue.empty, max_bitrate)
    for protocol in protocols:
        protocol.deliver = ingress
    dtls.on("statechange", ingress.state_changed)
    ingress.state_changed()
    return ingress


def _lean_missing() -> list[str]:
    """The names the lean receive path reads on live objects (checked by check_private_api)."""
    from aiortc.rtcdtlstransport import RTCCertificate
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    missing = [f"{_qualname(o)}.{n}" for o, n in (
        (aiortc.rtcrtpreceiver, "StreamStatistics"),
        (aiortc.rtp, "RTP_HISTORY_SIZE"),
    ) if not _has(o, n)]
    if missing:
        return missing
    stats = aiortc.rtcrtpreceiver.StreamStatistics(90000)
    missing += [f"aiortc.rtcrtpreceiver.StreamStatistics.{a}" for a in _STATISTICS_ATTRIBUTES if not hasattr(stats, a)]
    ice = RTCIceTransport(RTCIceGatherer(iceServers=[]))
    dtls = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])
    missing += [f"aiortc.RTCDtlsTransport.{a}" for a in _DTLS_LEAN_ATTRIBUTES if not hasattr(dtls, a)]
    if not hasattr(getattr(dtls, "_rtp_header_extensions_map", None), "_HeaderExtensionsMap__ids"):
        missing.append("aiortc.rtp.HeaderExtensionsMap.__ids (the abs-send-time id)")
    if not hasattr(getattr(dtls, "_rtp_router", None), "ssrc_table"):
        missing.append("aiortc.rtcdtlstransport.RtpRouter.ssrc_table")
    if not hasattr(getattr(dtls, "_rtp_router", None), "senders"):
        missing.append("aiortc.rtcdtlstransport.RtpRouter.senders (the lean RTCP path)")
    connection = getattr(ice, "_connection", None)
    if not hasattr(getattr(connection, "_queue", None), "empty"):
        missing.append("aioice.Connection._queue (the receive queue)")
    return missing


# --- subscriber lean RTCP path -----------------------------------------------------------------
#
# A subscriber connection receives RTCP only: receiver reports, NACKs, PLI/FIR and REMB, several a
# second from each subscriber. aiortc takes each datagram through aioice's queue, a task wakeup
# of the DTLS transport, pylibsrtp's wrapper and one awaited handler per packet. `RtcpIngress`
# is the deliver of the connection's endpoints on the shared sockets instead: in the socket's
# callback it unprotects the SRTCP (libsrtp's srtp_unprotect_rtcp called from C, or pylibsrtp),
# parses it with aiortc's parser and runs the same handlers aiortc's router picks, at once.
# Every handler on this path completes without awaiting: the subscriber m-lines' senders have
# `hook_sender_rtcp`, whose on_rtcp answers NACK/PLI/FIR/REMB itself (aiortc's awaited
# retransmit never runs), and aiortc's receiver report and sender report handlers do not await.
# One that does is closed and counted (`suspended`), never left half-run. DTLS, RTP, and a
# datagram behind others still in aiortc's queue (the order is kept) go aiortc's way.


class RtcpIngress:
    """The lean RTCP path of one subscriber connection (see the section comment)."""

    __slots__ = (
        "dtls", "fallback", "queue_empty", "srtp", "key", "unprotect", "packets", "fallbacks", "failures",
        "suspended", "__weakref__",
    )

    def __init__(self, dtls: RTCDtlsTransport, fallback: Callable[[bytes, int], None],
                 queue_empty: Callable[[], bool]) -> None:
        self.dtls = dtls
        self.fallback = fallback
        self.queue_empty = queue_empty
        self.srtp: Any = None  # the receiving SRTP session while DTLS is connected
        self.key: Any = None
        self.unprotect: Callable[[Any, bytes], bytes | None] = _unprotect_rtcp_python
        self.packets = 0  # SRTCP datagrams taken through this path
        self.fallbacks = 0  # SRTP/SRTCP handed to aiortc's path
        self.failures = 0  # SRTCP that did not unprotect (dropped, as aiortc drops them)
        self.suspended = 0  # handlers that awaited (closed; none is expected)

    def state_changed(self) -> None:
        from . import fastpath

        _take_receive_session(self, fastpath.unprotect_rtcp, _unprotect_rtcp_python)

    def __call__(self, data: bytes, component: int) -> None:
        if (
            self.srtp is None
            or data[0] < 128  # DTLS
            or not 191 < data[1] < 209  # RTP (aiortc's test)
            or len(data) < 8
            or not self.queue_empty()  # keep the order of what aiortc still has to read
        ):
            if self.srtp is not None and data[0] > 127:
                self.fallbacks += 1
            self.fallback(data, component)
            return
        plain = self.unprotect(self.key, data)
        if plain is None:  # authentication, replay: aiortc drops these too
            self.failures += 1
            return
        self.packets += 1
        dtls = self.dtls
        dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
        try:
            packets = aiortc.rtp.RtcpPacket.parse(plain)
        except ValueError:  # as aiortc: not parsed, dropped
            return
        try:
            router = dtls._rtp_router
            for packet in packets:
                for recipient in _rtcp_recipients(router, packet):
                    self._run(recipient._handle_rtcp_packet(packet))
        except Exception:  # never into the socket's callback
            logging.getLogger("meeting_sfu.sfu.ingress").exception("lean rtcp failed")

    def _run(self, handler: Any) -> None:
        try:
            handler.send(None)
        except StopIteration:
            return
        except Exception:
            logging.getLogger("meeting_sfu.sfu.ingress").exception("rtcp handler failed")
            return
        handler.close()
        self.suspended += 1
        logging.getLogger("meeting_sfu.sfu.ingress").warning("an rtcp handler awaited on the lean path (closed)")

    def close(self) -> None:
        self.srtp = self.key = None


def _rtcp_recipients(router: Any, packet: Any) -> Any:
    """Whom aiortc's RtpRouter.route_rtcp hands `packet` to: the same rules, looked up directly
    for what subscribers send (receiver reports, RTPFB, PSFB and REMB), aiortc's own for the rest."""
    rtp = aiortc.rtp
    senders = router.senders
    if type(packet) is rtp.RtcpRrPacket:
        found = [senders.get(report.ssrc) for report in packet.reports]
    elif type(packet) is rtp.RtcpRtpfbPacket:
        found = [senders.get(packet.media_ssrc)]
    elif type(packet) is rtp.RtcpPsfbPacket:
        found = [senders.get(packet.media_ssrc)]
        if packet.fmt == rtp.RTCP_PSFB_APP:
            try:
                found += [senders.get(ssrc) for ssrc in rtp.unpack_remb_fci(packet.fci)[1]]
            except ValueError:
                pass
    else:
        return router.route_rtcp(packet)
    return dict.fromkeys(r for r in found if r is not None)  # each once, in order


def _unprotect_rtcp_python(session: Any, data: bytes) -> bytes | None:
    try:
        return session.unprotect_rtcp(data)
    except Exception:  # pylibsrtp.Error (authentication, replay), ValueError (too long)
        return None


def lean_rtcp(dtls: RTCDtlsTransport) -> RtcpIngress | None:
    """Give a subscriber connection the lean RTCP path on the shared sockets (None when its ICE
    does not run on them)."""
    connection = dtls.transport._connection
    protocols = [p for p in connection._protocols if isinstance(p, _SharedStunProtocol)]
    if not protocols:
        return None
    ingress = RtcpIngress(dtls, connection.data_received, connection._queue.empty)
    for protocol in protocols:
        protocol.deliver = ingress
    dtls.on("statechange", ingress.state_changed)
    ingress.state_changed()
    return ingress


# --- sender reports in batches -----------------------------------------------------------------
#
# Every idle sender of a subscriber m-line runs aiortc's RTCP task: a timer wakeup every 0.5-1.5 s,
# a sender report and an SDES object built, serialized and sent through the awaited send chain.
# `batch_sender_reports` replaces that task by an entry in one `SenderReports` of the event loop:
# one timer sends every report that is due (or due within TICK: at most that early), each built
# with one struct pack behind the SDES bytes kept from the first, protected by libsrtp called
# from C (or pylibsrtp) and sent on the nominated pair. Each sender's next report is again
# 0.5-1.5 s away, as aiortc draws it; aiortc's own bookkeeping (the LSR that receiver reports
# are matched against, the transport's counters) and the RTCP BYE when the sender stops are kept.

SenderInfo = tuple[int, int, int, int]  # NTP timestamp, RTP timestamp, packets, octets


class _Report:
    __slots__ = ("sender", "report", "sdes", "alive", "tx", "key", "protect", "path")

    def __init__(self, sender: RTCRtpSender, report: Callable[[], SenderInfo | None]) -> None:
        self.sender = sender
        self.report = report
        self.sdes: bytes | None = None
        self.alive = True
        # found again whenever the transport's sending SRTP session changes (a new DTLS session)
        self.tx: Any = None
        self.key: Any = None  # what `protect` takes: its srtp_t for the compiled one
        self.protect: Callable[[Any, bytes], bytes | None] = _protect_rtcp_python
        self.path: SendPath | None = None


class SenderReports:
    """The sender reports of the batched senders of one event loop (see the section comment)."""

    TICK = 0.1
    _SR = struct.Struct("!BBHIIIIII")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, _Report]] = []
        self.active = 0
        self.sent = 0
        self._order = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, sender: RTCRtpSender, report: Callable[[], SenderInfo | None]) -> _Report:
        entry = _Report(sender, report)
        self.active += 1
        self._push(entry, self.loop.time())
        return entry

    def remove(self, entry: _Report) -> None:
        if entry.alive:
            entry.alive = False
            self.active -= 1
            if self.active == 0:
                self.heap.clear()
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None

    def _push(self, entry: _Report, now: float) -> None:
        self._order += 1
        due = now + 0.5 + random.random()
        heapq.heappush(self.heap, (due, self._order, entry))
        if self._timer is None or due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = self.heap[0][0]
            self._timer = self.loop.call_at(self._timer_at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.loop.time()
        limit = now + self.TICK
        heap = self.heap
        due_now = []
        while heap and heap[0][0] <= limit:  # each entry once: its next is >= now + 0.5
            due_now.append(heapq.heappop(heap)[2])
        for entry in due_now:
            if not entry.alive:
                continue
            try:
                self._send(entry)
            except Exception:  # a report is never a reason to stop the others
                logging.getLogger("meeting_sfu.sfu.rtcp").exception("sender report failed")
            self._order += 1
            heapq.heappush(heap, (now + 0.5 + random.random(), self._order, entry))
        if heap and self._timer is None:
            self._timer_at = heap[0][0]
            self._timer = self.loop.call_at(self._timer_at, self._fire)

    def _send(self, entry: _Report) -> None:
        sender = entry.sender
        dtls = sender.transport
        tx = dtls._tx_srtp
        if tx is None or dtls.state != "connected":
            return
        info = entry.report()
        if info is None:
            return
        ntp, rtp_ts, count, octets = info
        if entry.sdes is None:
            cname = sender._RTCRtpSender__cname  # type: ignore[attr-defined]
            rtp = aiortc.rtp
            entry.sdes = b"" if cname is None else bytes(
                rtp.RtcpSdesPacket(chunks=[rtp.RtcpSourceInfo(ssrc=sender._ssrc, items=[(1, cname.encode("utf8"))])])
            )
        data = self._SR.pack(
            0x80, 200, 6, sender._ssrc, (ntp >> 32) & 0xFFFFFFFF, ntp & 0xFFFFFFFF, rtp_ts & 0xFFFFFFFF,
            count & 0xFFFFFFFF, octets & 0xFFFFFFFF,
        ) + entry.sdes
        path = entry.path
        if tx is not entry.tx or path is None:
            from . import fastpath

            path = entry.path = send_path(dtls)
            if path is None:
                return
            entry.tx = tx
            entry.key, entry.protect = tx, _protect_rtcp_python
            if fastpath.protect_rtcp is not None:
                entry.key, entry.protect = srtp_context(tx), fastpath.protect_rtcp
        protected = entry.protect(entry.key, data)
        if protected is None:
            return
        sender._RTCRtpSender__lsr = (ntp >> 16) & 0xFFFFFFFF  # type: ignore[attr-defined]
        sender._RTCRtpSender__lsr_time = time.time()  # type: ignore[attr-defined]
        path.sendto(protected, path.addr)
        dtls._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__tx_bytes += len(protected)  # type: ignore[attr-defined]
        self.sent += 1


def _protect_rtcp_python(session: Any, data: bytes) -> bytes | None:
    try:
        return session.protect_rtcp(data)
    except Exception:  # pylibsrtp.Error, ValueError (too long): this report is not sent
        return None


_sender_reports: dict[asyncio.AbstractEventLoop, SenderReports] = {}


def sender_reports() -> SenderReports:
    """The SenderReports of the running event loop."""
    loop = asyncio.get_running_loop()
    reports = _sender_reports.get(loop)
    if reports is None:
        for old in [lp for lp in _sender_reports if lp.is_closed()]:  # loops of ended tests
            del _sender_reports[old]
        reports = _sender_reports[loop] = SenderReports(loop)
    return reports


def batch_sender_reports(sender: RTCRtpSender, report: Callable[[], SenderInfo | None]) -> None:
    """Send an idle sender's reports from the loop's `SenderReports` instead of its own RTCP task
    (call before the sender starts); `report()` gives what to report, None when there is nothing
    yet (no report is sent)."""

    async def run_rtcp() -> None:
        sender._RTCRtpSender__rtcp_started.set()  # type: ignore[attr-defined]
        reports = sender_reports()
        entry = reports.add(sender, report)
        try:
            await asyncio.get_running_loop().create_future()  # parked until the sender stops
        except asyncio.CancelledError:
            pass
        finally:
            reports.remove(entry)
        await sender._send_rtcp([aiortc.rtp.RtcpByePacket(sources=[sender._ssrc])])  # as aiortc does
        sender._RTCRtpSender__rtcp_exited.set()  # type: ignore[attr-defined]

    sender._run_rtcp = run_rtcp  # type: ignore[method-assign]

