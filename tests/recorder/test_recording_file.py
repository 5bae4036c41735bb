"""The recorder writes real encoded media to Matroska without transcoding and survives a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import av

from recorder.recording import Recording, merge_parts, part_files
from tests.recorder.synthetic import OpusSource, VideoSource


def _count(path: Path) -> dict[str, tuple[str, int, int, float]]:
    """Per stream title: codec, packets, decoded frames, duration in seconds."""
    out = {}
    with av.open(str(path)) as c:
        for s in c.streams:
            title = s.metadata.get("title", str(s.index))
            packets = 0
            first = last = None
            decoded = 0
            with av.open(str(path)) as c2:
                s2 = c2.streams[s.index]
                for p in c2.demux(s2):
                    if p.dts is None:
                        continue
                    packets += 1
                    first = p.pts if first is None else first
                    last = p.pts
                    decoded += len(s2.codec_context.decode(p))
            out[title] = (s.codec_context.name, packets, decoded, float((last - first) * s.time_base))
    return out


def test_two_publishers_one_late_and_audio_mix(tmp_path):
    rec = Recording(tmp_path / "work")
    keyframes = []
    a, b = VideoSource("vp8", 1), VideoSource("h264", 2)
    audio = OpusSource()
    rec.add_video_track("a", "video/VP8", "alice/video", lambda: keyframes.append("a"))
    # Paced by a deadline per frame, not a sleep after each one: encoding takes time of its own,
    # and on a loaded machine 60 sleeps of 1/30 s would stretch the timeline past 2 s.
    t0 = time.monotonic()
    for i in range(60):  # 2 s of video at 30 fps, 50 audio packets a second
        if i == 30:
            rec.add_video_track("b", "video/H264", "bob/screen", lambda: keyframes.append("b"))
        for pkt in a.next_frame(force_keyframe=i == 0):
            rec.feed_rtp("a", pkt)
        if i >= 30:
            for pkt in b.next_frame(force_keyframe=i == 30):
                rec.feed_rtp("b", pkt)
        for _ in range(2 if i % 3 else 1):
            payload, ts = audio.next_packet()
            rec.feed_opus("mix", payload, ts)
        time.sleep(max(0.0, t0 + (i + 1) / 30 - time.monotonic()))
    final = tmp_path / "out" / "meeting.mkv"
    size = rec.finalize(final)
    assert size == final.stat().st_size > 0
    assert not list((tmp_path / "work").glob("*.mkv"))
    streams = _count(final)
    assert set(streams) == {"alice/video", "bob/screen", "audio mix"}
    codec, packets, decoded, duration = streams["alice/video"]
    assert codec == "vp8" and packets == 60 and decoded >= 58
    assert 1.8 <= duration <= 2.3
    codec, packets, decoded, duration = streams["bob/screen"]
    assert codec == "h264" and packets == 30 and decoded >= 25
    assert 0.8 <= duration <= 1.3
    codec, packets, decoded, duration = streams["audio mix"]
    assert codec == "opus" and packets == audio.index and decoded == packets
    assert keyframes == ["a", "b"]
    # The late track starts about a second into the recording timeline.
    with av.open(str(final)) as c:
        late = next(s for s in c.streams if s.metadata.get("title") == "bob/screen")
        first = next(p for p in c.demux(late) if p.pts is not None)
        assert 0.8 <= float(first.pts * late.time_base) <= 1.5


def test_loss_drops_frames_until_keyframe(tmp_path):
    rec = Recording(tmp_path / "work")
    asked = []
    src = VideoSource("vp8")
    rec.add_video_track("a", "VP8", "a", lambda: asked.append(1))
    for i in range(20):
        packets = src.next_frame(force_keyframe=i in (0, 12))
        if i == 5:
            packets = packets[1:] if len(packets) > 1 else []  # lose the start of frame 5
            src.seq += 0
        for pkt in packets:
            rec.feed_rtp("a", pkt)
    rec.finalize(tmp_path / "f.mkv")
    codec, packets, decoded, _ = _count(tmp_path / "f.mkv")["a"]
    # frames 0-4 and 12-19 survive; 5..11 are dropped (no keyframe to decode them against)
    assert packets == 13 and decoded == 13
    assert len(asked) >= 2


CRASHER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from recorder.recording import Recording
    from tests.recorder.synthetic import OpusSource, VideoSource
    rec = Recording({work!r})
    v = VideoSource("vp8")
    a = OpusSource()
    rec.add_video_track("v", "VP8", "v", lambda: None)
    i = 0
    while True:
        for p in v.next_frame(force_keyframe=i == 0):
            rec.feed_rtp("v", p)
        payload, ts = a.next_packet()
        rec.feed_opus("mix", payload, ts)
        i += 1
        if i == 45:
            print("ready", flush=True)
        time.sleep(1 / 30)
    """
)


def test_killed_recording_leaves_decodable_files(tmp_path):
    work = tmp_path / "work"
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER.format(root=root, work=str(work))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # about 60 frames written
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    parts = part_files(work)
    assert len(parts) == 2
    video = next(p for p in parts if "vp8" in p.name)
    with av.open(str(video)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert frames >= 40  # up to near the kill point (clusters of at most 0.5 s may be lost)
    size = merge_parts(work, tmp_path / "recovered.mkv")
    assert size > 0
    streams = _count(tmp_path / "recovered.mkv")
    assert streams["v"][2] >= 40 and streams["audio mix"][1] >= 30


def test_nothing_recorded_makes_no_file(tmp_path):
    rec = Recording(tmp_path / "work")
    rec.add_video_track("a", "VP8", "a", lambda: None)  # announced, but no packet came
    assert rec.finalize(tmp_path / "out" / "empty.mkv") == 0
    assert not (tmp_path / "out" / "empty.mkv").exists()
    assert not (tmp_path / "work").exists()
