"""The recorder off the forwarding path: a slow disk costs recorded frames (dropped, counted,
re-entered at a keyframe), never forwarded ones; a full disk ends that recording with a playable
file while the meeting's media goes on.

The disk is the only stand-in here: `recorder.recording.open_part_file` gives the parts a file
whose writes are slow (a disk that cannot keep up), and the full disk is a real, small tmpfs
when this sandbox may mount one (else writes fail with ENOSPC at the same file level)."""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import shutil
import subprocess
import time
from pathlib import Path

import av
import pytest

import recorder.meeting
import recorder.recording
from control_api.keys import MEDIA
from recorder.meeting import MeetingRecording
from sfu.service import LocalMediaService
from tests.helpers import new_id, start_server
from tests.recorder.test_meeting_recording import _join, _meeting, _publish
from tests.sfu.clients import Publisher, Subscriber, bounded


class _SlowFile(io.FileIO):
    """A disk writing `bandwidth` bytes per second while `slow` is set (slower than the
    stream), at full speed again once it is cleared."""

    slow = True
    bandwidth = 2000

    def write(self, data) -> int:  # noqa: ANN001
        deadline = time.monotonic() + len(data) / _SlowFile.bandwidth
        while _SlowFile.slow and time.monotonic() < deadline:
            time.sleep(0.02)
        return super().write(data)


class _FullAfter(io.FileIO):
    """Fallback full disk: writes fail with ENOSPC once `room` bytes were written in all."""

    room = 60_000

    def write(self, data) -> int:  # noqa: ANN001
        if _FullAfter.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        _FullAfter.room -= len(data)
        return super().write(data)


async def _subscribe(server, token: str, events, meeting_id: str, publisher_id: str, sub: Subscriber) -> str:
    status, body = await server.call(
        "PUT",
        f"/meetings/{meeting_id}/media/subscribe",
        token,
        {"subscribe": [{"userId": publisher_id, "type": "video"}], "unsubscribe": []},
    )
    assert status == 204, body
    offered = await events.wait("MEETING_SDP_OFFERED", timeout=10)
    status, body = await server.call(
        "PUT", f"/meetings/{meeting_id}/media/answer", token, {"sdp": await bounded(sub.answer(offered["sdp"]))}
    )
    assert status == 204, body
    subscribed = await events.wait("MEETING_PARTICIPANT_SUBSCRIBED", timeout=10)
    return subscribed["streams"][0]["mid"]


async def _fps(sub: Subscriber, mid: str, seconds: float) -> float:
    await sub.wait_frames(mid, 1)
    before = sub.tracks[mid].frames
    await asyncio.sleep(seconds)
    return (sub.tracks[mid].frames - before) / seconds


def _decode(path: Path) -> tuple[int, int, int]:
    """(frames decoded, decoding errors, keyframes) of the file's video track."""
    frames = errors = keyframes = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            keyframes += packet.is_keyframe
            try:
                frames += len(packet.decode())
            except av.error.FFmpegError:
                errors += 1
    return frames, errors, keyframes


async def _meeting_with_subscriber(server):
    alice, bob, room = new_id(), new_id(), new_id()
    alice_token = server.token(alice, {room: "owner"})
    bob_token = server.token(bob, {room: "member"})
    meeting_id = await _meeting(server, alice_token, room)
    alice_events = await _join(server, alice_token, meeting_id)
    bob_events = await _join(server, bob_token, meeting_id)
    pub, sub = Publisher("VP8"), Subscriber()
    await _publish(server, alice_token, alice_events, meeting_id, pub)
    mid = await _subscribe(server, bob_token, bob_events, meeting_id, alice, sub)
    return alice_token, meeting_id, pub, sub, mid


def _in_process_media() -> LocalMediaService:
    """The disk faults are injected in this process: the media plane runs in it too (the worker
    pool runs the very same recorder in its worker processes)."""
    return LocalMediaService(recorder_factory=MeetingRecording)


@pytest.fixture
async def server(tmp_path):
    handle = await start_server(tmp_path, media_service=_in_process_media())
    try:
        yield handle
    finally:
        await bounded(handle.stop(), 15)


async def test_slow_disk_drops_recorded_frames_not_forwarded_ones(server, monkeypatch):
    monkeypatch.setattr(recorder.recording, "open_part_file", lambda path: _SlowFile(path, "wb"))
    monkeypatch.setattr(recorder.meeting, "MAX_QUEUE", 64)
    monkeypatch.setattr(_SlowFile, "slow", True)
    stats = server.app[MEDIA].stats
    token, meeting_id, pub, sub, mid = await _meeting_with_subscriber(server)
    try:
        await sub.wait_frames(mid, 15)
        without = await _fps(sub, mid, 3.0)
        status, _ = await server.call("POST", f"/meetings/{meeting_id}/startRecording", token)
        assert status == 204
        with_recording = await _fps(sub, mid, 5.0)
        dropped = stats.recorder_dropped
        print(f"slow disk (2 kB/s): forwarded {without:.1f} fps without recording, "
              f"{with_recording:.1f} fps while recording; {dropped} recorded packets dropped")
        assert with_recording >= 0.8 * without and with_recording >= 15
        assert dropped > 0
        _SlowFile.slow = False  # the disk recovers: what is queued drains at once
        await asyncio.sleep(1.0)
        status, _ = await server.call(
            "POST", f"/meetings/{meeting_id}/stopRecording", token, {"name": "slow", "folderId": "f"}
        )
        assert status == 204
    finally:
        await sub.close()
        await pub.close()
    frames, errors, keyframes = _decode(server.config.recording_path / "f" / "slow.mkv")
    # Recorded from a keyframe on after the drops (the recorder asked for one): all decodes.
    assert frames >= 20 and errors == 0 and keyframes >= 2, (frames, errors, keyframes)
    async with server.http.get(server.url + "/metrics") as r:
        (line,) = [x for x in (await r.text()).splitlines() if x.startswith("meeting_sfu_recorder_dropped_total ")]
    assert float(line.split()[1]) >= dropped


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


async def test_full_disk_ends_the_recording_playable_and_media_goes_on(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="meeting_sfu.recorder")
    parts_dir = tmp_path / "data" / "recordings-in-progress"  # where the parts are written
    mounted = _mount_tmpfs(parts_dir, "512k")
    if mounted:
        filler = parts_dir / "filler"
        free = shutil.disk_usage(parts_dir).free
        filler.write_bytes(b"\0" * max(0, free - 80_000))  # about 80 kB left for the parts
    else:
        monkeypatch.setattr(recorder.recording, "open_part_file", lambda path: _FullAfter(path, "wb"))
        monkeypatch.setattr(_FullAfter, "room", 80_000)
    server = await start_server(tmp_path, media_service=_in_process_media())
    try:
        token, meeting_id, pub, sub, mid = await _meeting_with_subscriber(server)
        try:
            await sub.wait_frames(mid, 15)
            status, _ = await server.call("POST", f"/meetings/{meeting_id}/startRecording", token)
            assert status == 204

            def disk_full() -> list[logging.LogRecord]:
                return [r for r in caplog.records if "disk full" in r.getMessage()]

            for _ in range(300):
                if disk_full():
                    break
                await asyncio.sleep(0.1)
            (line,) = disk_full()
            assert line.levelno == logging.ERROR and line.name == "meeting_sfu.recorder"
            # The meeting's media goes on.
            after = await _fps(sub, mid, 2.0)
            assert after >= 15, after
            # One line for the whole recording, not one per part or per packet.
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert errors == [line], [r.getMessage() for r in errors]
            status, _ = await server.call(
                "POST", f"/meetings/{meeting_id}/stopRecording", token, {"name": "full", "folderId": "f"}
            )
            assert status == 204
        finally:
            await sub.close()
            await pub.close()
        final = server.config.recording_path / "f" / "full.mkv"
        frames, errors, _ = _decode(final)
        print(f"full disk ({'tmpfs' if mounted else 'injected ENOSPC'}): {frames} frames kept, "
              f"forwarding {after:.1f} fps after the disk filled")
        assert frames >= 10 and errors == 0, (frames, errors)
    finally:
        await bounded(server.stop(), 15)
        if mounted:
            subprocess.run(["umount", "-l", str(parts_dir)], capture_output=True)
