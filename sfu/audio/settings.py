"""AudioSettings: the audio bridge's tunables (talking detection, buffering, Opus encoding)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AudioSettings:
    """Settings of one meeting's audio bridge; every field has a working default.

    Levels use the RFC 6464 scale, as Janus's `audio_level_average` does: a level is `-dBov`,
    0 is the loudest and 127 is silence. `talking_level_dbov = 45` means "louder than -45 dBov"
    (a negative value is read as the dBov figure itself, so -45 means the same).
    """

    talking_level_dbov: int = 45
    """A 20 ms frame louder than this counts towards talking."""
    talking_packets: int = 10
    """Net loud frames (a quiet one takes one back) that start talking: 10 = 200 ms."""
    silence_packets: int = 40
    """Quiet (or missing) frames in a row that stop talking: 40 = 800 ms."""
    mix_gate_dbov: int = 65
    """Frames quieter than this (and not part of talking) are left out of the mix, so a quiet
    microphone does not need a mix-minus of its own (see `mix_hangover_packets`)."""
    mix_hangover_packets: int = 25
    """Once in the mix, a participant stays in it this many frames after his last loud one."""
    jitter_frames: int = 4
    """Decoded 20 ms frames kept per participant at most; older ones are dropped."""
    opus_bitrate: int = 32000
    """Bit rate of every encoded mix, bits per second."""
    opus_complexity: int = 5
    """libopus complexity 0..10 for the mixes (CPU against quality)."""
    opus_application: str = "lowdelay"
    """libopus application of the mixes: "lowdelay" (CELT only: about 4 ms less algorithmic
    delay and half the CPU of "voip" at 32 kbit/s, measured), "audio" or "voip" (SILK/hybrid,
    better below about 24 kbit/s)."""

    def __post_init__(self) -> None:
        def clamp(value: object, low: int, high: int, name: str) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number")
            return int(min(max(value, low), high))

        object.__setattr__(
            self, "talking_level_dbov",
            clamp(abs(self.talking_level_dbov), 0, 127, "talking_level_dbov"),
        )
        object.__setattr__(
            self, "mix_gate_dbov", clamp(abs(self.mix_gate_dbov), 0, 127, "mix_gate_dbov")
        )
        if self.opus_application not in ("lowdelay", "audio", "voip"):
            raise ValueError("opus_application must be lowdelay, audio or voip")
        for name, low, high in (
            ("talking_packets", 1, 3000),
            ("silence_packets", 1, 3000),
            ("mix_hangover_packets", 0, 3000),
            ("jitter_frames", 2, 25),
            ("opus_bitrate", 6000, 510000),
            ("opus_complexity", 0, 10),
        ):
            object.__setattr__(self, name, clamp(getattr(self, name), low, high, name))


__all__ = ["AudioSettings"]
