"""VP8 payload descriptor parse/rewrite and keyframe detection (VP8, H.264), on synthetic payloads."""

from sfu import vp8
from sfu.rtp import h264_is_keyframe_start

from .synthetic_rtp import h264_payload, vp8_payload


def test_descriptor_fields_and_keyframe_size():
    d = vp8.parse(vp8_payload(0x1234, 7, tid=0, keyframe=True, size=(1280, 720)))
    assert d is not None
    assert (d.picture_id, d.pid_bits, d.tl0, d.keyframe) == (0x1234, 15, 7, True)
    assert (d.width, d.height) == (1280, 720)
    assert d.size == 6  # b0, X, 2-byte picture id, TL0PICIDX, TID byte


def test_interframe_and_continuation_are_not_keyframes():
    assert not vp8.parse(vp8_payload(5, 1)).keyframe
    assert not vp8.parse(vp8_payload(5, 1, start=False, keyframe=True)).keyframe


def test_seven_bit_picture_id_is_rewritten_with_fifteen_bits():
    payload = vp8_payload(100, 3, pid_bits=7, body=b"BODY")
    d = vp8.parse(payload)
    assert (d.picture_id, d.pid_bits, d.size) == (100, 7, 5)
    head = vp8.build(d, 0x7ABC, 9)
    again = vp8.parse(head + payload[d.size:])
    assert (again.picture_id, again.pid_bits, again.tl0) == (0x7ABC, 15, 9)
    assert (head + payload[d.size:]).endswith(b"BODY")
    assert again.tk == d.tk  # TID/Y/KEYIDX untouched


def test_truncated_descriptors_are_refused():
    payload = vp8_payload(0x1234, 7)
    for n in range(0, 5):
        assert vp8.parse(payload[:n]) is None


def test_picture_id_extender_unwraps_seven_bits():
    ext = vp8.PictureIdExtender()
    values = [ext.extend(p & 0x7F) for p in range(120, 260)]
    assert values == list(range(120, 260))
    assert ext.extend(255 & 0x7F) == 255  # a late one stays below the newest


def test_h264_keyframe_detection():
    assert h264_is_keyframe_start(h264_payload("stap-sps"))
    assert h264_is_keyframe_start(h264_payload("fu-idr-start"))
    assert h264_is_keyframe_start(h264_payload("idr"))
    assert not h264_is_keyframe_start(h264_payload("fu-idr-middle"))
    assert not h264_is_keyframe_start(h264_payload("non-idr"))
    assert not h264_is_keyframe_start(h264_payload("stap-non-idr"))
    assert not h264_is_keyframe_start(b"")
