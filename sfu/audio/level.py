"""Audio levels on the RFC 6464 scale (0 loudest .. 127 silent) and talking detection."""

from __future__ import annotations

import math

import numpy as np

from ..rtp import read_extension

SILENT = 127
_FULL_SCALE_SQUARED = 32767.0 * 32767.0


def level_of(samples: np.ndarray) -> int:
    """The level of int16 samples: -dBov of their RMS (RFC 6465 appendix A), 0..127."""
    n = samples.shape[0]
    if n == 0:
        return SILENT
    x = samples.astype(np.float32)
    mean_square = float(np.dot(x, x)) / n
    if mean_square <= 0.0:
        return SILENT
    db = 10.0 * math.log10(mean_square / _FULL_SCALE_SQUARED)
    return min(SILENT, max(0, round(-db)))


def audio_level_extension(data: bytes, ext_id: int) -> int:
    """The RFC 6464 level carried by extension `ext_id` of an RTP packet, or -1 when absent
    (one- or two-byte header extensions; never raises)."""
    value = read_extension(data, ext_id)
    return value[0] & 0x7F if value else -1


class TalkingDetector:
    """Hysteresis on per-frame levels: `talking_packets` net loud frames start talking (a quiet
    frame takes one back), `silence_packets` quiet frames in a row stop it."""

    __slots__ = ("_loud", "_quiet", "start_count", "stop_count", "talking", "threshold")

    def __init__(self, threshold: int, start_count: int, stop_count: int) -> None:
        self.threshold = threshold
        self.start_count = start_count
        self.stop_count = stop_count
        self.talking = False
        self._loud = 0
        self._quiet = 0

    def update(self, level: int) -> bool:
        """Feed one frame's level (SILENT when none arrived); True when `talking` changed."""
        loud = level <= self.threshold
        if self.talking:
            if loud:
                self._quiet = 0
                return False
            self._quiet += 1
            if self._quiet >= self.stop_count:
                self.talking = False
                self._loud = 0
                self._quiet = 0
                return True
            return False
        if loud:
            self._loud += 1
            if self._loud >= self.start_count:
                self.talking = True
                self._quiet = 0
                return True
        elif self._loud:
            self._loud -= 1
        return False

    def reset(self) -> bool:
        """Forget everything; True when it was talking."""
        was = self.talking
        self.talking = False
        self._loud = 0
        self._quiet = 0
        return was


__all__ = ["SILENT", "TalkingDetector", "audio_level_extension", "level_of"]
