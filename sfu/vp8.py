"""VP8 RTP payload descriptor (RFC 7741 §4.2): read once per packet, rewritten per subscriber.

A subscriber that is switched between simulcast layers must see one VP8 stream: picture ids and
TL0PICIDX continue across the switch (a decoder takes a jump in them for a lost frame). Each layer
numbers its pictures on its own, so a forwarder keeps per-subscriber offsets and writes a new
descriptor in front of the unchanged VP8 payload. The picture id is always written with 15 bits
(M=1), whatever the publisher used, so that offsets never overflow a 7-bit field.
"""

from __future__ import annotations

from typing import NamedTuple


class Descriptor(NamedTuple):
    """The parts of a VP8 payload descriptor a forwarder needs (one tuple per packet)."""

    size: int  # bytes of descriptor before the VP8 payload
    b0: int  # first byte: X R N S R PID
    picture_id: int  # -1 when absent
    pid_bits: int  # 0, 7 or 15
    tl0: int  # TL0PICIDX, -1 when absent
    tk: int  # the TID/Y/KEYIDX byte, -1 when absent
    tk_flags: int  # T and K bits of the extension byte (0x20, 0x10)
    keyframe: bool  # first packet of a keyframe (S=1, PID=0, P=0)
    width: int  # from a keyframe's header, else 0
    height: int


def parse(payload: bytes) -> Descriptor | None:
    """The descriptor of a VP8 RTP payload, or None when it is malformed."""
    n = len(payload)
    if n < 1:
        return None
    b0 = payload[0]
    i = 1
    picture_id = -1
    pid_bits = 0
    tl0 = -1
    tk = -1
    tk_flags = 0
    if b0 & 0x80:
        if n < 2:
            return None
        x = payload[1]
        i = 2
        if x & 0x80:  # I: picture id
            if i >= n:
                return None
            if payload[i] & 0x80:
                if i + 1 >= n:
                    return None
                picture_id = ((payload[i] & 0x7F) << 8) | payload[i + 1]
                pid_bits = 15
                i += 2
            else:
                picture_id = payload[i]
                pid_bits = 7
                i += 1
        if x & 0x40:  # L: TL0PICIDX
            if i >= n:
                return None
            tl0 = payload[i]
            i += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX
            if i >= n:
                return None
            tk = payload[i]
            tk_flags = x & 0x30
            i += 1
    if i > n:
        return None
    keyframe = False
    width = height = 0
    if b0 & 0x10 and not b0 & 0x07 and i < n and not payload[i] & 0x01:
        keyframe = True
        # Keyframe header: 3-byte frame tag, start code 9d 01 2a, 14-bit width and height.
        if n >= i + 10 and payload[i + 3:i + 6] == b"\x9d\x01\x2a":
            width = (payload[i + 6] | payload[i + 7] << 8) & 0x3FFF
            height = (payload[i + 8] | payload[i + 9] << 8) & 0x3FFF
    return Descriptor(i, b0, picture_id, pid_bits, tl0, tk, tk_flags, keyframe, width, height)


def build(d: Descriptor, picture_id: int, tl0: int) -> bytes:
    """A descriptor like `d` with the given picture id (written with 15 bits) and TL0PICIDX
    (ignored when `d` has none). Without a picture id in `d`, the descriptor is kept as is
    except for TL0PICIDX."""
    x = 0
    out = bytearray((d.b0 | 0x80,))
    if d.picture_id >= 0:
        x |= 0x80
    if d.tl0 >= 0:
        x |= 0x40
    x |= d.tk_flags
    if not x:
        return bytes((d.b0 & 0x7F,))
    out.append(x)
    if d.picture_id >= 0:
        out.append(0x80 | (picture_id >> 8) & 0x7F)
        out.append(picture_id & 0xFF)
    if d.tl0 >= 0:
        out.append(tl0 & 0xFF)
    if d.tk >= 0:
        out.append(d.tk)
    return bytes(out)


class PictureIdExtender:
    """Turns a publisher's 7-bit picture ids into a 15-bit sequence (one per layer)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = -1

    def extend(self, pid7: int) -> int:
        if self.last < 0:
            self.last = pid7
            return pid7
        delta = (pid7 - self.last) & 0x7F
        if delta >= 0x40:  # older (reordered): below the last one
            return (self.last - ((self.last - pid7) & 0x7F)) & 0x7FFF
        self.last = (self.last + delta) & 0x7FFF
        return self.last


def pid_newer(a: int, b: int) -> bool:
    """15-bit picture id `a` comes after `b`."""
    return a != b and ((a - b) & 0x7FFF) < 0x4000


__all__ = ["Descriptor", "PictureIdExtender", "build", "parse", "pid_newer"]
