"""Peer-connection plumbing shared by the SFU and the audio bridge.

One place decides how the server's RTCPeerConnections gather ICE candidates: host candidates on
the configured addresses only (127.0.0.1 included, which aioice skips on its own), no STUN server
(aiortc would otherwise ask a public one), and the 1:1 NAT address written into the SDP.

Every server PC of the process sends and receives on the same sockets, one per ICE address and
all on `udp_port` (sfu.udp_mux): a firewall opens that one port whatever the number of PCs.
Client PCs made in the same process (tests, the load generator) keep their own sockets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from . import aiortc_hooks as hooks
from .udp_mux import UdpMuxSet


@dataclass(frozen=True)
class IceSettings:
    addresses: tuple[str, ...] = ("127.0.0.1",)
    public_ip: str | None = None
    udp_port: int = 0  # the shared sockets' port; 0: the OS chooses


_settings = IceSettings()
_sockets = UdpMuxSet()
_sockets.configure(_settings.addresses, _settings.udp_port)
hooks.install_shared_ice()  # only connections gathering inside `local_sdp` are affected
hooks.install_consent_freshness()  # every ICE connection of the process, server and client


def _configured_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    out = []
    for address in _settings.addresses:
        is_v6 = ":" in address
        if (is_v6 and use_ipv6) or (not is_v6 and use_ipv4):
            out.append(address)
    return out


def configure_ice(settings: IceSettings) -> None:
    """Make every RTCPeerConnection of this process gather on `settings.addresses`, and the
    server's ones share one UDP socket per address on `settings.udp_port`.

    Call it once per process, in its event loop or before it; the sockets are bound by
    `bind_ice()`, or at the latest when the first server PC gathers, and closed by `close_ice()`.
    aioice has no per-connection option for the addresses, so its module-level address lookup
    is replaced (process-wide). An empty address list restores aioice's own choice.
    """
    global _settings
    if not 0 <= settings.udp_port <= 65535:
        raise RuntimeError(f"the media UDP port ([media] udp_port) must be 0..65535, not {settings.udp_port}")
    _settings = settings
    hooks.set_host_addresses(_configured_host_addresses if settings.addresses else None)
    addresses = settings.addresses or tuple(hooks.default_host_addresses())
    _sockets.configure(addresses, settings.udp_port)


def ice_settings() -> IceSettings:
    return _settings


def bind_ice() -> list[tuple[str, int]]:
    """Bind the shared sockets now and return their (address, port): a port already in use
    is a RuntimeError naming `[media] udp_port` before anything else starts."""
    return _sockets.bind()


async def start_ice() -> list[tuple[str, int]]:
    """Open the shared sockets on the running event loop (done by the first server PC too)."""
    return [mux.address for mux in await _sockets.start()]


def close_ice() -> None:
    """Close the shared sockets (the service's close); a later server PC opens them again."""
    _sockets.close()


def ice_sockets() -> UdpMuxSet:
    """The process's shared sockets (stats and tests look at their tables)."""
    return _sockets


def create_peer_connection() -> RTCPeerConnection:
    """A server-side PC: no STUN/TURN servers, candidates per `configure_ice`, and one ICE
    transport for every m-line (max-bundle), so one ufrag names one connection."""
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host.*)$")


def rewrite_public_ip(sdp: str, public_ip: str | None) -> str:
    """Advertise `public_ip` in place of the host candidates' addresses (1:1 NAT)."""
    if not public_ip:
        return sdp
    lines = []
    for line in sdp.split("\r\n"):
        m = _CANDIDATE.match(line)
        if m:
            line = m.group(1) + public_ip + m.group(3)
        elif line.startswith("c=IN IP4 ") and ":" not in public_ip:
            line = "c=IN IP4 " + public_ip
        lines.append(line)
    return "\r\n".join(lines)


async def local_sdp(pc: RTCPeerConnection, description: RTCSessionDescription) -> str:
    """Set the local description and return the complete SDP (aiortc gathers every candidate
    before `setLocalDescription` returns, so no trickle channel is needed)."""
    muxes = await _sockets.start()
    with hooks.shared_ice(muxes):
        await pc.setLocalDescription(description)
    return rewrite_public_ip(pc.localDescription.sdp, _settings.public_ip)


def parse_session_description(sdp: str, type_: str) -> RTCSessionDescription:
    """Validate the shape of an SDP string enough to refuse garbage before aiortc sees it."""
    from .api import bad_sdp

    if not isinstance(sdp, str) or not sdp.strip():
        raise bad_sdp("sdp is empty")
    if not sdp.lstrip().startswith("v=0"):
        raise bad_sdp("sdp must start with v=0")
    if "\r\n" not in sdp:
        sdp = sdp.replace("\n", "\r\n")
    try:
        from aiortc.sdp import SessionDescription

        SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises ValueError, KeyError, IndexError... on bad input
        raise bad_sdp(f"sdp cannot be parsed: {exc.__class__.__name__}") from exc
    return RTCSessionDescription(sdp=sdp, type=type_)


__all__ = [
    "IceSettings",
    "bind_ice",
    "close_ice",
    "configure_ice",
    "create_peer_connection",
    "ice_settings",
    "ice_sockets",
    "local_sdp",
    "parse_session_description",
    "rewrite_public_ip",
    "start_ice",
]
