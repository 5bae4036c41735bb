"""One UDP socket per ICE address for every server peer connection of the process.

Each `UdpMux` owns one bound socket and hands every datagram to the ICE connection it belongs
to, the way mediasoup's WebRtcServer and pion's UDP mux do:

- a STUN request goes by the local ufrag in its USERNAME ("<local>:<remote>"): that is how a
  client whose offer carried no candidate is found at all;
- everything else goes by the remote address, and only to a connection that has that address:
  one it answered a valid check from (verified) or sent a check to (learned on send, so that
  the answers to its own checks and consent requests come back to it).

What belongs to nobody, or cannot be ICE, DTLS, SRTP or SRTCP (RFC 7983 first-byte ranges), or
is longer than the SRTP library accepts, is dropped and counted in
`metrics.UDP_DATAGRAMS_DROPPED`: no datagram from anyone can close or disturb a connection.

The connections side (aioice) is plugged in by `aiortc_hooks`: an attached endpoint is that
connection's STUN protocol object, which offers `datagram_received(data, addr)` (STUN, parsed
by aioice), `deliver(data, component)` (DTLS/SRTP, queued for aiortc) and `component`.
Sending never goes through this module: a connection's transport `sendto` is the socket's own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .metrics import UDP_DATAGRAMS_DROPPED

log = logging.getLogger("meeting_sfu.sfu.udp_mux")

SRTP_MAX_BYTES = 1500  # pylibsrtp refuses longer packets ("packet is too long"), fatally for aiortc
MAX_ADDRESSES = 16  # remote addresses one connection may be reached from (anti-flood bound)
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # one socket carries every PC: far beyond the 256 KiB default
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)  # Linux <linux/in.h>
IP_PMTUDISC_PROBE = getattr(socket, "IP_PMTUDISC_PROBE", 3)  # DF set, path MTU ignored
_STUN_COOKIE = b"\x21\x12\xa4\x42"
_STUN_USERNAME = 0x0006

Address = tuple[Any, ...]


class Endpoint(Protocol):
    component: int

    def datagram_received(self, data: bytes, addr: Address) -> None: ...

    def deliver(self, data: bytes, component: int) -> None: ...


def stun_request_ufrag(data: bytes) -> str | None:
    """The local ufrag of a STUN request (None for a response or an indication).

    Raises ValueError when the datagram is not a well-formed STUN message: header length,
    magic cookie and attribute bounds are checked, nothing else (aioice authenticates)."""
    n = len(data)
    if n < 20 or data[4:8] != _STUN_COOKIE:
        raise ValueError("not a STUN message")
    length = int.from_bytes(data[2:4], "big")
    if length + 20 != n or length & 3:
        raise ValueError("STUN length does not match")
    if (data[0] << 8 | data[1]) & 0x0110:  # class bits: 00 is a request
        return None
    pos = 20
    while pos + 4 <= n:
        kind = data[pos] << 8 | data[pos + 1]
        size = data[pos + 2] << 8 | data[pos + 3]
        end = pos + 4 + size
        if end > n:
            raise ValueError("STUN attribute overruns the message")
        if kind == _STUN_USERNAME:
            ufrag = data[pos + 4:end].partition(b":")[0]
            return ufrag.decode("ascii")  # UnicodeDecodeError is a ValueError
        pos = end + (-size & 3)
    return ""


class UdpMux(asyncio.DatagramProtocol):
    """The demultiplexer of one shared socket (see module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.transport: asyncio.DatagramTransport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sendto: Callable[..., None] = _closed_sendto
        self.closed = False
        self._by_ufrag: dict[str, Endpoint] = {}
        self._by_addr: dict[Address, Endpoint] = {}
        self._verified: set[Address] = set()
        self._learned: dict[Endpoint, set[Address]] = {}
        self._dropped = UDP_DATAGRAMS_DROPPED
        self._send_fd: Any = None

    # --- asyncio ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        self.sendto = self.transport.sendto  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sendto = _closed_sendto

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error address=%s:%s error=%s", *self.address, exc)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        endpoint = self._by_addr.get(addr)
        if data:
            first = data[0]
            if endpoint is not None:
                if first > 127:
                    if first < 192 and len(data) <= SRTP_MAX_BYTES:
                        endpoint.deliver(data, endpoint.component)  # SRTP, SRTCP
                        return
                elif first > 19:
                    if first < 64:
                        endpoint.deliver(data, endpoint.component)  # DTLS
                        return
                elif first < 4:
                    self._stun(data, addr, endpoint)
                    return
            elif first < 4:
                self._stun(data, addr, None)
                return
        self._drop(data, addr, endpoint)

    # --- tables (cold path) -----------------------------------------------------------------

    def ufrag_taken(self, ufrag: str) -> bool:
        return ufrag in self._by_ufrag

    def attach(self, ufrag: str, endpoint: Endpoint) -> None:
        if ufrag in self._by_ufrag:
            raise ValueError(f"ufrag {ufrag!r} is already attached")
        self._by_ufrag[ufrag] = endpoint
        self._learned[endpoint] = set()

    def detach(self, endpoint: Endpoint) -> None:
        """Forget the endpoint: its ufrag and every address it had."""
        for ufrag in [u for u, e in self._by_ufrag.items() if e is endpoint]:
            del self._by_ufrag[ufrag]
        for addr in self._learned.pop(endpoint, ()):
            if self._by_addr.get(addr) is endpoint:
                del self._by_addr[addr]
                self._verified.discard(addr)

    def learn(self, addr: Address, endpoint: Endpoint, *, verified: bool) -> None:
        """`endpoint` sent a check to `addr` (verified=False) or answered a valid check from it
        (verified=True). An address belongs to one endpoint; a verified owner keeps it, an
        unverified one yields it to an endpoint that verified it."""
        learned = self._learned.get(endpoint)
        if learned is None:  # detached
            return
        owner = self._by_addr.get(addr)
        if owner is endpoint:
            if verified:
                self._verified.add(addr)
            return
        if owner is not None:
            if not verified or addr in self._verified:
                return
            self._learned[owner].discard(addr)
        if len(learned) >= MAX_ADDRESSES:
            log.debug("address limit reached address=%s:%s remote=%s", *self.address, addr)
            return
        learned.add(addr)
        self._by_addr[addr] = endpoint
        if verified:
            self._verified.add(addr)

    def send_fd(self) -> Any:
        """A duplicate of the socket's descriptor for the compiled fast path (sfu.fastpath),
        made once; None without the extension or once closed. The duplicate is closed when its
        last user goes, so a consumer never sends on a descriptor reused for another file."""
        if self.closed:
            return None
        if self._send_fd is None:
            from . import fastpath

            fileno = self.sock.fileno()
            if fileno < 0 and self.transport is not None:  # an event loop that took the socket over
                sock = self.transport.get_extra_info("socket")
                fileno = sock.fileno() if sock is not None else -1
            self._send_fd = fastpath.socket_fd(fileno)
        return self._send_fd

    def table_sizes(self) -> dict[str, int]:
        """Entries of each table (tests check they drain when connections close)."""
        return {
            "ufrags": len(self._by_ufrag),
            "addresses": len(self._by_addr),
            "verified": len(self._verified),
            "endpoints": len(self._learned),
        }

    def close(self) -> None:
        self.closed = True
        self.sendto = _closed_sendto
        self._send_fd = None  # consumers still holding it keep the duplicate open, harmlessly
        if self.transport is not None and self.loop is not None and not self.loop.is_closed():
            self.transport.close()
        else:  # never opened, or its loop is gone (a test's loop): the socket itself
            self.sock.close()

    # --- rare paths -------------------------------------------------------------------------

    def _stun(self, data: bytes, addr: Address, endpoint: Endpoint | None) -> None:
        try:
            ufrag = stun_request_ufrag(data)
        except ValueError:
            self._drop_as("malformed", data, addr)
            return
        if ufrag is not None:
            target = self._by_ufrag.get(ufrag)
            if target is None:
                self._drop_as("unknown_ufrag", data, addr)
                return
        elif endpoint is None:
            self._drop_as("unknown_address", data, addr)
            return
        else:
            target = endpoint
        try:
            target.datagram_received(data, addr)
        except Exception as exc:  # aioice could not parse an attribute: drop, never raise
            self._drop_as("malformed", data, addr, exc)

    def _drop(self, data: bytes, addr: Address, endpoint: Endpoint | None) -> None:
        if not data:
            reason = "empty"
        elif 127 < data[0] < 192 and len(data) > SRTP_MAX_BYTES:
            reason = "too_long"
        elif endpoint is None:
            reason = "unknown_address"
        else:
            reason = "malformed"
        self._drop_as(reason, data, addr)

    def _drop_as(self, reason: str, data: bytes, addr: Address, exc: Exception | None = None) -> None:
        self._dropped[reason] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "udp datagram dropped reason=%s local=%s:%s remote=%s bytes=%d%s",
                reason, *self.address, addr, len(data), f" error={exc!r}" if exc else "",
            )


class UdpMux6(UdpMux):
    """IPv6: asyncio reports 4-tuple addresses; ICE speaks of (host, port)."""

    def datagram_received(self, data: bytes, addr: Address) -> None:
        super().datagram_received(data, (addr[0], addr[1]))


def _closed_sendto(data: bytes, addr: Any = None) -> None:
    """Sending on a closed shared socket drops the datagram, as asyncio's closed transports do."""


def bind_socket(address: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to (address, port), with large buffers (best effort)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            except OSError:
                pass  # the kernel caps it at net.core.rmem_max / wmem_max anyway
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        elif sys.platform.startswith("linux"):
            # Don't fragment, without path-MTU discovery (datagrams are sized to fit, as WebRTC
            # sizes them): the kernel then leaves each IPv4 header's identification at 0 instead
            # of drawing one per datagram from its shared generator.
            try:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
            except OSError:
                pass
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class UdpMuxSet:
    """The process's shared sockets: one `UdpMux` per ICE address, bound on `port` (0: the OS
    chooses), opened on the running event loop at first use, closed by `close()`."""

    def __init__(self) -> None:
        self.addresses: tuple[str, ...] = ()
        self.port = 0
        self._socks: list[socket.socket] = []
        self._muxes: list[UdpMux] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Future[list[UdpMux]] | None = None

    def configure(self, addresses: Sequence[str], port: int) -> None:
        """Bind on these addresses and port from now on (open sockets elsewhere are closed)."""
        addresses = tuple(addresses)
        if (addresses, port) != (self.addresses, self.port):
            self.close()
            self.addresses, self.port = addresses, port

    def bind(self) -> list[tuple[str, int]]:
        """Bind the sockets now (no event loop needed); RuntimeError names what failed."""
        if not self._socks and not self._muxes:
            socks = []
            try:
                for address in self.addresses:
                    socks.append(bind_socket(address, self.port))
            except OSError as exc:
                for sock in socks:
                    sock.close()
                raise RuntimeError(
                    f"cannot bind the media UDP port {address}:{self.port} ([media] udp_port): "
                    f"{exc.strerror or exc}"
                ) from None
            self._socks = socks
            for sock in socks:
                rcv = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                log.info("media udp socket bound address=%s:%s rcvbuf=%d", *sock.getsockname()[:2], rcv)
        return self.local_addresses()

    def local_addresses(self) -> list[tuple[str, int]]:
        if self._muxes:
            return [m.address for m in self._muxes]
        return [s.getsockname()[:2] for s in self._socks]

    async def start(self) -> list[UdpMux]:
        """The demultiplexers, opened on the running loop (bound first when needed)."""
        loop = asyncio.get_running_loop()
        if self._muxes and self._loop is loop and not any(m.closed for m in self._muxes):
            return self._muxes
        starting = self._starting
        if starting is not None and self._loop is loop and not starting.done():
            return await asyncio.shield(starting)
        if self._muxes:  # opened on another (ended) loop, or closed under us: start afresh
            self.close()
        self._loop = loop
        self._starting = starting = loop.create_future()
        try:
            self.bind()
            muxes = []
            for sock in self._socks:
                cls = UdpMux6 if sock.family == socket.AF_INET6 else UdpMux
                _, mux = await loop.create_datagram_endpoint(lambda s=sock, c=cls: c(s), sock=sock)
                muxes.append(mux)
            self._socks = []
            self._muxes = muxes
            starting.set_result(muxes)
        except BaseException as exc:
            self.close()
            if isinstance(exc, asyncio.CancelledError):
                starting.cancel()
            else:
                starting.set_exception(exc)
                starting.exception()  # retrieved: the caller gets it raised
            raise
        finally:
            self._starting = None
        return muxes

    def muxes(self) -> list[UdpMux]:
        return list(self._muxes)

    def close(self) -> None:
        for mux in self._muxes:
            mux.close()
        for sock in self._socks:
            sock.close()
        self._muxes = []
        self._socks = []
        self._loop = None


__all__ = [
    "MAX_ADDRESSES",
    "SRTP_MAX_BYTES",
    "UdpMux",
    "UdpMuxSet",
    "bind_socket",
    "stun_request_ufrag",
]
