"""RTP/RTCP wire helpers for the forwarding hot path: plain functions over bytes.

Nothing here builds an object per packet: headers are read with `struct` and rewritten by
concatenating a freshly packed 12-byte header, a per-consumer header-extension block and the
untouched payload.
"""

from __future__ import annotations

import struct
import time

HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
SEQ_TS = struct.Struct("!HI")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970


def payload_offset(data: bytes) -> int:
    """Where the payload of an RTP packet starts (after CSRCs and extensions), -1 if malformed."""
    n = len(data)
    if n < 12:
        return -1
    b0 = data[0]
    if b0 >> 6 != 2:
        return -1
    off = 12 + (b0 & 0x0F) * 4
    if b0 & 0x10:
        if off + 4 > n:
            return -1
        off += 4 + ((data[off + 2] << 8) | data[off + 3]) * 4
    if off > n:
        return -1
    return off


def payload_end(data: bytes) -> int:
    """Where the payload ends: padding (P bit) excluded, -1 if the padding count is invalid."""
    if data[0] & 0x20:
        pad = data[-1]
        if pad == 0 or pad > len(data) - 12:
            return -1
        return len(data) - pad
    return len(data)


def abs_send_time_bytes(now: float | None = None) -> bytes:
    """The 3-byte abs-send-time value (6.18 fixed-point seconds, NTP based) for `now`.

    The NTP epoch offset is a multiple of 64 s, so it vanishes modulo 2**24 / 2**18."""
    value = int((time.time() if now is None else now) * 262144) & 0xFFFFFF
    return value.to_bytes(3, "big")


def ntp_from_unix(seconds: float) -> int:
    """64-bit NTP timestamp for a Unix time."""
    return int((seconds + NTP_EPOCH_OFFSET) * 4294967296) & 0xFFFFFFFFFFFFFFFF


def extension_block(mid_id: int | None, mid: str | None, abs_id: int | None) -> tuple[bytes, bytes]:
    """A one-byte-header extension block carrying the subscriber's MID and abs-send-time.

    Returns (before, after): the 3-byte abs-send-time value goes between them (when `abs_id`),
    so a packet's extension is `before + abs3 + after`. Both are empty when nothing was
    negotiated."""
    body = b""
    if mid_id is not None and mid and 1 <= mid_id <= 14:
        raw = mid.encode()[:16]
        body += bytes([(mid_id << 4) | (len(raw) - 1)]) + raw
    use_abs = abs_id is not None and 1 <= abs_id <= 14
    size = len(body) + (4 if use_abs else 0)
    if size == 0:
        return b"", b""
    words = (size + 3) // 4
    head = b"\xbe\xde" + U16.pack(words) + body
    if use_abs:
        head += bytes([(abs_id << 4) | 2])  # type: ignore[operator]
    tail = b"\x00" * (words * 4 - size)
    return head, tail


def vp8_is_keyframe_start(payload: bytes) -> bool:
    """First packet of a VP8 keyframe (RFC 7741 descriptor S=1, PID=0, frame tag P=0)."""
    n = len(payload)
    if n < 2:
        return False
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x07:
        return False
    i = 1
    if b0 & 0x80:
        x = payload[1]
        i = 2
        if x & 0x80:
            if i >= n:
                return False
            i += 2 if payload[i] & 0x80 else 1
        if x & 0x40:
            i += 1
        if x & 0x30:
            i += 1
    if i >= n:
        return False
    return not payload[i] & 0x01


def h264_is_keyframe_start(payload: bytes) -> bool:
    """A packet that starts an H.264 access unit a decoder can begin with (SPS or IDR), in
    single NAL, STAP-A or FU-A packetization (RFC 6184, packetization-mode=1)."""
    n = len(payload)
    if n < 1:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A
        i = 1
        while i + 2 < n:
            size = (payload[i] << 8) | payload[i + 1]
            if payload[i + 2] & 0x1F in (5, 7):
                return True
            i += 2 + size
        return False
    if nal == 28 and n >= 2:  # FU-A
        fu = payload[1]
        return bool(fu & 0x80) and fu & 0x1F in (5, 7)
    return False


def keyframe_detector(mime_type: str):  # noqa: ANN201 - returns a plain function
    """The keyframe-start test for a codec's payload."""
    if mime_type.lower() == "video/h264":
        return h264_is_keyframe_start
    return vp8_is_keyframe_start


def unwrap_rtx(data: bytes, offset: int, media_pt: int, media_ssrc: int) -> bytes | None:
    """Restore the original packet from an RTX one (RFC 4588): original sequence number from
    the first two payload bytes, media payload type and SSRC. None for padding-only probes."""
    end = payload_end(data)
    if end < 0 or end - offset < 2:
        return None
    osn = data[offset:offset + 2]
    header = bytearray(data[:offset])
    header[1] = (data[1] & 0x80) | media_pt
    header[2:4] = osn
    header[8:12] = U32.pack(media_ssrc)
    return bytes(header) + data[offset + 2:]


def read_extension(data: bytes, ext_id: int) -> bytes | None:
    """The value of header extension `ext_id` in an RTP packet (one- or two-byte form)."""
    b0 = data[0]
    if not b0 & 0x10 or ext_id <= 0:
        return None
    off = 12 + (b0 & 0x0F) * 4
    n = len(data)
    if off + 4 > n:
        return None
    profile = (data[off] << 8) | data[off + 1]
    end = off + 4 + ((data[off + 2] << 8) | data[off + 3]) * 4
    if end > n:
        return None
    i = off + 4
    if profile == 0xBEDE:
        while i < end:
            byte = data[i]
            if byte == 0:
                i += 1
                continue
            xid, size = byte >> 4, (byte & 0x0F) + 1
            if xid == 15:
                return None
            if xid == ext_id:
                return data[i + 1:min(i + 1 + size, end)]
            i += 1 + size
    elif profile & 0xFFF0 == 0x1000:
        while i + 1 < end:
            xid = data[i]
            if xid == 0:
                i += 1
                continue
            size = data[i + 1]
            if xid == ext_id:
                return data[i + 2:min(i + 2 + size, end)]
            i += 2 + size
    return None


def header_length(data: bytes) -> int:
    """Length of a well-formed RTP header this module built (no CSRCs)."""
    if data[0] & 0x10:
        return 16 + ((data[14] << 8) | data[15]) * 4
    return 12


def wrap_rtx(packet: bytes, rtx_pt: int, rtx_seq: int, rtx_ssrc: int) -> bytes:
    """An RTX retransmission (RFC 4588) of a packet this module built."""
    hlen = header_length(packet)
    header = bytearray(packet[:hlen])
    header[1] = (packet[1] & 0x80) | rtx_pt
    header[2:4] = U16.pack(rtx_seq)
    header[8:12] = U32.pack(rtx_ssrc)
    return bytes(header) + packet[2:4] + packet[hlen:]


def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit sequence number `a` comes after `b`."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


__all__ = [
    "ABS_SEND_TIME_URI",
    "HEADER",
    "MID_URI",
    "SEQ_TS",
    "abs_send_time_bytes",
    "extension_block",
    "h264_is_keyframe_start",
    "header_length",
    "keyframe_detector",
    "ntp_from_unix",
    "payload_end",
    "payload_offset",
    "read_extension",
    "seq_newer",
    "unwrap_rtx",
    "vp8_is_keyframe_start",
    "wrap_rtx",
]
