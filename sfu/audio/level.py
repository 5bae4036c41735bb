"""Audio levels on the RFC 6464 scale (0 loudest .. 127 silent) and talking detection."""

from __future__ import annotations

import math

import numpy as np

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
    """The RFC 6464 level carried by extension `ext_id` of an RTP packet, or -1 when absent.

    Reads one-byte (0xBEDE) and two-byte (0x100x) header extension blocks; never raises."""
    if len(data) < 16 or not data[0] & 0x10:
        return -1
    start = 12 + (data[0] & 0x0F) * 4
    if start + 4 > len(data):
        return -1
    profile = (data[start] << 8) | data[start + 1]
    end = start + 4 + ((data[start + 2] << 8) | data[start + 3]) * 4
    if end > len(data):
        return -1
    i = start + 4
    if profile == 0xBEDE:
        while i < end:
            b = data[i]
            if b == 0:  # padding
                i += 1
                continue
            xid, length = b >> 4, (b & 0x0F) + 1
            if xid == 15:
                return -1
            if xid == ext_id and i + 1 < end:
                return data[i + 1] & 0x7F
            i += 1 + length
    elif profile & 0xFFF0 == 0x1000:
        while i + 1 < end:
            xid = data[i]
            if xid == 0:
                i += 1
                continue
            length = data[i + 1]
            if xid == ext_id and length >= 1 and i + 2 < end:
                return data[i + 2] & 0x7F
            i += 2 + length
    return -1


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
