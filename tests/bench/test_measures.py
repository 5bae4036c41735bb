"""The client-side measuring pieces of the bench, on their own."""

from __future__ import annotations

import av
import numpy as np

from bench.aggregate import pct
from bench.clients import StreamCounter, draw_stamp, read_stamp, rtp_payload, sdp_sections


def test_luma_stamp_round_trip_through_vp8():
    luma = np.full((480, 640), 100, dtype=np.uint8)
    value = 0xDEADBEEF
    draw_stamp(luma, value)
    uv = np.full((240, 640), 128, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(np.vstack([luma, uv]), format="yuv420p")
    assert read_stamp(frame) == value
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = 640, 480, "yuv420p"
    codec.bit_rate = 500_000
    packets = codec.encode(frame) + codec.encode(None)
    decoder = av.CodecContext.create("vp8", "r")
    decoded = [f for p in packets for f in decoder.decode(p)]
    assert decoded and read_stamp(decoded[0]) == value


def test_unreadable_stamp_is_none():
    luma = np.full((480, 640), 128, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(np.vstack([luma, luma[:240]]), format="yuv420p")
    assert read_stamp(frame) is None


def test_stream_counter_loss_and_wrap():
    c = StreamCounter()
    for seq in [65533, 65534, 65535, 1, 2, 2, 0, 4]:  # 0 late, 3 lost, 2 repeated
        c.add(seq, 100, seq == 4, 1.0)
    snap = c.snapshot()
    assert snap["expected"] == 8  # 65533 .. 4 across the wrap
    assert snap["packets"] == 8 and snap["frames"] == 1
    assert c.first_frame_at == 1.0


def test_stream_counter_a_late_packet_from_before_the_wrap_does_not_count_a_second_wrap():
    c = StreamCounter()
    for seq in [65534, 65535, 0, 1, 65533, 2, 3]:  # 65533 late, after the wrap
        c.add(seq, 100, False, 1.0)
    assert c.snapshot() == {"packets": 7, "bytes": 700, "frames": 0, "expected": 6}  # 65534 .. 3
    assert c.last_seq == 3 and c.max_ext == 65536 + 3


def test_rtp_payload_skips_csrc_and_extension():
    header = bytes([0x90 | 0x01, 0x60]) + b"\x00\x01" + b"\x00" * 8 + b"\x00" * 4  # 1 CSRC
    ext = b"\xbe\xde\x00\x01" + b"\x10\xaa\x00\x00"
    assert rtp_payload(header + ext + b"payload") == b"payload"


def test_sdp_sections_media_ssrcs_without_rtx():
    sdp = "\r\n".join(
        [
            "v=0",
            "m=video 9 UDP/TLS/RTP/SAVPF 97 98",
            "a=mid:0",
            "a=sendonly",
            "a=ssrc-group:FID 111 222",
            "a=ssrc:111 cname:x",
            "a=ssrc:222 cname:x",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=mid:1",
            "a=ssrc:333 cname:y",
            "",
        ]
    )
    video, audio = sdp_sections(sdp)
    assert (video["mid"], video["kind"], video["ssrcs"], video["direction"]) == (
        "0",
        "video",
        [111],
        "sendonly",
    )
    assert (audio["kind"], audio["ssrcs"]) == ("audio", [333])


def test_percentiles():
    assert pct([], 50) is None
    assert pct([3.0, 1.0, 2.0], 50) == 2.0
    assert pct(list(map(float, range(1, 101))), 95) == 95.0
