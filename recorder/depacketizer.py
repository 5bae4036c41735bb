"""RTP to encoded frames: VP8 (RFC 7741) and H.264 packetization-mode 1 (RFC 6184).

Frames are assembled from the payloads of one RTP timestamp and emitted on the marker bit (or
when the next timestamp starts). A sequence gap inside a frame drops that frame and every frame
up to the next keyframe, since a decoder cannot use inter frames after a loss; `needs_keyframe`
tells the caller to ask the publisher for one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_FRAME_BYTES = 4 * 1024 * 1024
ANNEXB = b"\x00\x00\x00\x01"


@dataclass(frozen=True, slots=True)
class RtpView:
    payload_type: int
    sequence: int
    timestamp: int
    marker: bool
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpView | None:
    """Header fields and payload of an RTP packet; None when it is not one."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    cc = data[0] & 0x0F
    offset = 12 + 4 * cc
    if data[0] & 0x10:
        if len(data) < offset + 4:
            return None
        (length,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * length
    end = len(data)
    if data[0] & 0x20:
        if end == 0 or data[-1] > end - offset:
            return None
        end -= data[-1]
    if offset > end:
        return None
    m_pt = data[1]
    seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
    return RtpView(m_pt & 0x7F, seq, ts, bool(m_pt & 0x80), ssrc, bytes(data[offset:end]))


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    timestamp: int
    keyframe: bool
    width: int = 0
    height: int = 0


class _Assembler:
    """Collects payload parts per timestamp and tracks losses."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._ts: int | None = None
        self._next_seq: int | None = None
        self._broken = False  # a packet of the current frame was lost
        self.waiting_keyframe = True
        self.needs_keyframe = False

    def _reset(self, ts: int | None) -> None:
        self._parts = []
        self._size = 0
        self._ts = ts
        self._broken = False

    def push(self, pkt: RtpView) -> list[tuple[list[bytes], int]]:
        """Returns the complete frames (parts, timestamp) that this packet closes."""
        done: list[tuple[list[bytes], int]] = []
        if self._next_seq is not None:
            delta = (pkt.sequence - self._next_seq) & 0xFFFF
            if delta >= 0x8000:
                return done  # late or duplicate packet (a retransmission we no longer need)
            if delta:
                self._broken = True
        self._next_seq = (pkt.sequence + 1) & 0xFFFF
        if self._ts is not None and pkt.timestamp != self._ts:
            if self._parts and not self._broken:
                done.append((self._parts, self._ts))
            elif self._parts or self._broken:
                self._lost()
            self._reset(pkt.timestamp)
        elif self._ts is None:
            self._ts = pkt.timestamp
        self._parts.append(pkt.payload)
        self._size += len(pkt.payload)
        if self._size > MAX_FRAME_BYTES:
            self._reset(None)
            self._lost()
            return done
        if pkt.marker:
            if not self._broken:
                done.append((self._parts, pkt.timestamp))
            else:
                self._lost()
            self._reset(None)
        return done

    def _lost(self) -> None:
        self.waiting_keyframe = True
        self.needs_keyframe = True


class _Depacketizer:
    """Frame assembly and loss tracking shared by the codecs."""

    def __init__(self) -> None:
        self._asm = _Assembler()

    @property
    def needs_keyframe(self) -> bool:
        """True once after a loss: the caller should ask the publisher for a keyframe."""
        flag, self._asm.needs_keyframe = self._asm.needs_keyframe, False
        return flag


class Vp8Depacketizer(_Depacketizer):
    """RTP payloads of VP8 to VP8 frames."""

    @staticmethod
    def _strip(payload: bytes) -> tuple[bytes, bool] | None:
        """The VP8 data after the payload descriptor, and whether it starts a partition 0."""
        if not payload:
            return None
        first = payload[0]
        i = 1
        if first & 0x80:
            if len(payload) < 2:
                return None
            ext = payload[1]
            i = 2
            if ext & 0x80:
                if len(payload) <= i:
                    return None
                i += 2 if payload[i] & 0x80 else 1
            if ext & 0x40:
                i += 1
            if ext & 0x30:
                i += 1
        if i > len(payload):
            return None
        start = bool(first & 0x10) and (first & 0x07) == 0
        return payload[i:], start

    def push(self, pkt: RtpView) -> list[Frame]:
        stripped = self._strip(pkt.payload)
        if stripped is None:
            return []
        data, _ = stripped
        view = RtpView(pkt.payload_type, pkt.sequence, pkt.timestamp, pkt.marker, pkt.ssrc, data)
        out = []
        for parts, ts in self._asm.push(view):
            frame = b"".join(parts)
            if not frame:
                continue
            key = not (frame[0] & 0x01)
            width = height = 0
            if key:
                if len(frame) < 10 or frame[3:6] != b"\x9d\x01\x2a":
                    continue
                width = struct.unpack_from("<H", frame, 6)[0] & 0x3FFF
                height = struct.unpack_from("<H", frame, 8)[0] & 0x3FFF
                self._asm.waiting_keyframe = False
            elif self._asm.waiting_keyframe:
                continue
            out.append(Frame(frame, ts, key, width, height))
        return out


class H264Depacketizer(_Depacketizer):
    """RTP payloads of H.264 (single NAL, STAP-A, FU-A) to Annex B access units."""

    @staticmethod
    def _nals(parts: list[bytes]) -> list[bytes]:
        nals: list[bytes] = []
        fu: bytearray | None = None
        for p in parts:
            if not p:
                continue
            kind = p[0] & 0x1F
            if 1 <= kind <= 23:
                nals.append(p)
            elif kind == 24:  # STAP-A
                i = 1
                while i + 2 <= len(p):
                    (size,) = struct.unpack_from("!H", p, i)
                    i += 2
                    if size == 0 or i + size > len(p):
                        break
                    nals.append(p[i : i + size])
                    i += size
            elif kind == 28 and len(p) >= 2:  # FU-A
                header = p[1]
                if header & 0x80:
                    fu = bytearray([(p[0] & 0xE0) | (header & 0x1F)])
                if fu is not None:
                    fu += p[2:]
                    if header & 0x40:
                        nals.append(bytes(fu))
                        fu = None
        return nals

    def push(self, pkt: RtpView) -> list[Frame]:
        out = []
        for parts, ts in self._asm.push(pkt):
            nals = self._nals(parts)
            if not nals:
                continue
            kinds = {n[0] & 0x1F for n in nals}
            key = 5 in kinds or 7 in kinds
            if key:
                self._asm.waiting_keyframe = False
            elif self._asm.waiting_keyframe:
                continue
            data = b"".join(ANNEXB + n for n in nals)
            width, height = h264_dimensions(data) if 7 in kinds else (0, 0)
            out.append(Frame(data, ts, key, width, height))
        return out


def depacketizer_for(codec: str) -> Vp8Depacketizer | H264Depacketizer | None:
    name = codec.lower().split("/")[-1]
    if name == "vp8":
        return Vp8Depacketizer()
    if name == "h264":
        return H264Depacketizer()
    return None


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]  # IndexError past the end: caught by the caller
        value = (byte >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        v = self.ue()
        return (v + 1) // 2 if v & 1 else -(v // 2)


def h264_dimensions(access_unit: bytes) -> tuple[int, int]:
    """Width and height from the SPS of an Annex B access unit; (0, 0) when there is none."""
    for nal in access_unit.split(ANNEXB):
        if not nal or nal[0] & 0x1F != 7:
            continue
        rbsp = nal[1:].replace(b"\x00\x00\x03", b"\x00\x00")
        try:
            b = _Bits(rbsp)
            profile = b.bits(8)
            b.bits(16)  # constraint flags, level
            b.ue()  # sps id
            chroma = 1
            if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
                chroma = b.ue()
                if chroma == 3:
                    b.bit()
                b.ue()
                b.ue()
                b.bit()
                if b.bit():  # scaling matrices: skip their lists
                    for i in range(8 if chroma != 3 else 12):
                        if b.bit():
                            last = nxt = 8
                            for _ in range(16 if i < 6 else 64):
                                if nxt:
                                    nxt = (last + b.se() + 256) % 256
                                last = nxt or last
            b.ue()  # log2_max_frame_num
            poc = b.ue()
            if poc == 0:
                b.ue()
            elif poc == 1:
                b.bit()
                b.se()
                b.se()
                for _ in range(b.ue()):
                    b.se()
            b.ue()  # max refs
            b.bit()
            w_mbs = b.ue() + 1
            h_units = b.ue() + 1
            frame_mbs_only = b.bit()
            if not frame_mbs_only:
                b.bit()
            b.bit()
            width = w_mbs * 16
            height = h_units * 16 * (2 - frame_mbs_only)
            if b.bit():  # cropping
                left, right, top, bottom = b.ue(), b.ue(), b.ue(), b.ue()
                cx = 2 if chroma in (1, 2) else 1
                cy = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
                width -= (left + right) * cx
                height -= (top + bottom) * cy
            if 0 < width <= 16384 and 0 < height <= 16384:
                return width, height
        except (IndexError, ValueError):
            continue
    return 0, 0
