"""Synthetic RTP for the simulcast unit tests: VP8 and H.264 payloads, rid header extensions."""

from __future__ import annotations

import struct

RID_EXT = 10
REPAIRED_RID_EXT = 11


def vp8_payload(picture_id: int, tl0: int | None, tid: int = 0, *, start: bool = True, keyframe: bool = False,
                size: tuple[int, int] = (640, 360), pid_bits: int = 15, body: bytes = b"\x00" * 20) -> bytes:
    """A VP8 payload descriptor (X, I, L, T) and a frame start (keyframe header when asked)."""
    b0 = 0x80 | (0x10 if start else 0)
    x = 0x80 | (0x40 if tl0 is not None else 0) | 0x20
    out = bytearray((b0, x))
    if pid_bits == 15:
        out += bytes((0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF))
    else:
        out.append(picture_id & 0x7F)
    if tl0 is not None:
        out.append(tl0 & 0xFF)
    out.append((tid << 6) | 0x20)
    if start and keyframe:
        w, h = size
        out += b"\x10\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", w, h)  # P=0: keyframe
    elif start:
        out += b"\x11\x02\x00"  # P=1: interframe
    return bytes(out) + body


def h264_payload(kind: str) -> bytes:
    if kind == "stap-sps":  # STAP-A: SPS, PPS
        sps, pps = b"\x67\x42\x00\x1f\xaa", b"\x68\xce\x3c\x80"
        return b"\x18" + struct.pack("!H", len(sps)) + sps + struct.pack("!H", len(pps)) + pps
    if kind == "fu-idr-start":
        return b"\x7c\x85" + b"\x00" * 10
    if kind == "fu-idr-middle":
        return b"\x7c\x05" + b"\x00" * 10
    if kind == "idr":
        return b"\x65" + b"\x00" * 10
    if kind == "non-idr":
        return b"\x41" + b"\x00" * 10
    if kind == "stap-non-idr":
        nal = b"\x41\x00\x00"
        return b"\x18" + struct.pack("!H", len(nal)) + nal
    raise ValueError(kind)


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, *, marker: bool = False,
        rid: str | None = None, repaired: str | None = None, padding: int = 0) -> bytes:
    """An RTP packet, with a one-byte header extension carrying the rid / repaired-rid."""
    ext = b""
    if rid is not None:
        raw = rid.encode()
        ext += bytes(((RID_EXT << 4) | (len(raw) - 1),)) + raw
    if repaired is not None:
        raw = repaired.encode()
        ext += bytes(((REPAIRED_RID_EXT << 4) | (len(raw) - 1),)) + raw
    b0 = 0x80
    block = b""
    if ext:
        ext += b"\x00" * (-len(ext) % 4)
        block = b"\xbe\xde" + struct.pack("!H", len(ext) // 4) + ext
        b0 |= 0x10
    tail = b""
    if padding:
        b0 |= 0x20
        tail = b"\x00" * (padding - 1) + bytes((padding,))
    header = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    return header + block + payload + tail


def rtx(rtx_pt: int, seq: int, ts: int, ssrc: int, original_seq: int, payload: bytes, *,
        repaired: str | None = None, marker: bool = False) -> bytes:
    return rtp(rtx_pt, seq, ts, ssrc, struct.pack("!H", original_seq) + payload, repaired=repaired, marker=marker)


def parse_out(packet: bytes) -> dict:
    """Fields of a packet a consumer sent (no CSRC; extension skipped)."""
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    off = 12
    if b0 & 0x10:
        off += 4 + struct.unpack_from("!H", packet, 14)[0] * 4
    return {"marker": bool(b1 & 0x80), "pt": b1 & 0x7F, "seq": seq, "ts": ts, "ssrc": ssrc, "payload": packet[off:]}
