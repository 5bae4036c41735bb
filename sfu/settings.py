"""The media plane's own settings: plain data, built by whoever composes a media plane (the
control plane's configuration never reaches `sfu`), and sent to media workers as-is."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .audio.settings import AudioSettings


@dataclass(frozen=True)
class MediaPlaneSettings:
    ice_addresses: tuple[str, ...] = ("127.0.0.1",)
    """Addresses to gather host candidates on (and to bind the shared UDP sockets to)."""
    public_ip: str = ""
    """Advertised in place of the host addresses (1:1 NAT); empty: none."""
    udp_port: int = 0
    """The UDP port of this media plane's shared sockets; 0: chosen by the OS."""
    audio: AudioSettings = field(default_factory=AudioSettings)
    max_video_bitrate: int = 2_500_000
    """Bits/s: the highest REMB a video publisher gets (DESIGN §6.1)."""
    max_screen_bitrate: int = 2_500_000
    """Bits/s: the highest REMB a screen publisher gets."""

    def to_wire(self) -> dict[str, Any]:
        body = asdict(self)
        body["ice_addresses"] = list(self.ice_addresses)
        return body

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> MediaPlaneSettings:
        audio_names = {f.name for f in fields(AudioSettings)}
        audio = AudioSettings(**{k: v for k, v in dict(data.get("audio") or {}).items() if k in audio_names})
        return cls(
            ice_addresses=tuple(data.get("ice_addresses") or ()),
            public_ip=str(data.get("public_ip") or ""),
            udp_port=int(data.get("udp_port") or 0),
            audio=audio,
            max_video_bitrate=int(data.get("max_video_bitrate") or cls.max_video_bitrate),
            max_screen_bitrate=int(data.get("max_screen_bitrate") or cls.max_screen_bitrate),
        )


__all__ = ["MediaPlaneSettings"]
