"""Peer-connection plumbing shared by the SFU and the audio bridge.

One place decides how the server's RTCPeerConnections gather ICE candidates: host candidates on
the configured addresses only (127.0.0.1 included, which aioice skips on its own), no STUN server
(aiortc would otherwise ask a public one), and the 1:1 NAT address written into the SDP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription


@dataclass(frozen=True)
class IceSettings:
    addresses: tuple[str, ...] = ("127.0.0.1",)
    public_ip: str | None = None


_settings = IceSettings()
_original_get_host_addresses = aioice.ice.get_host_addresses


def _configured_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    out = []
    for address in _settings.addresses:
        is_v6 = ":" in address
        if (is_v6 and use_ipv6) or (not is_v6 and use_ipv4):
            out.append(address)
    return out


def configure_ice(settings: IceSettings) -> None:
    """Make every RTCPeerConnection of this process gather on `settings.addresses`.

    aioice has no per-connection option for this, so its module-level address lookup is
    replaced (process-wide). An empty address list restores aioice's own choice.
    """
    global _settings
    _settings = settings
    if settings.addresses:
        aioice.ice.get_host_addresses = _configured_host_addresses
    else:
        aioice.ice.get_host_addresses = _original_get_host_addresses


def ice_settings() -> IceSettings:
    return _settings


def create_peer_connection() -> RTCPeerConnection:
    """A server-side PC: no STUN/TURN servers, candidates per `configure_ice`."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


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
    "configure_ice",
    "create_peer_connection",
    "ice_settings",
    "local_sdp",
    "parse_session_description",
    "rewrite_public_ip",
]
