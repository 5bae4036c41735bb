"""Recording a meeting through the API: producers (one late, another codec) into one Matroska
file, the rules and events of start/stopRecording, fallback paths, and a crash mid-recording."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import av
import pytest
from aiortc import RTCSessionDescription

from control_api.auth import TokenAuthority
from control_api.keys import STORE
from tests.helpers import SECRET, new_id, start_server
from tests.sfu.clients import Publisher, bounded, read_counter
from tests.sfu.test_audio_bridge import Client as AudioClient


@pytest.fixture
async def server(tmp_path):
    handle = await start_server(tmp_path)
    try:
        yield handle
    finally:
        await bounded(handle.stop(), 15)


async def _meeting(server, owner_token: str, room: str) -> str:
    status, meeting = await server.call(
        "POST", "/meetings", owner_token, {"name": "rec", "roomId": room, "meetingType": "permanent"}
    )
    assert status == 200, meeting
    status, _ = await server.call("POST", f"/meetings/{meeting['id']}/start", owner_token)
    assert status == 200
    return meeting["id"]


async def _join(server, token: str, meeting_id: str):
    events = await server.events(token)
    status, body = await server.call(
        "POST",
        f"/meetings/{meeting_id}/join",
        token,
        {"audioStreamEnabled": False, "videoStreamEnabled": False},
        headers={"queue-id": events.queue_id},
    )
    assert (status, body) == (200, {"status": "ACCEPTED"}), body
    return events


async def _talk(server, token: str, events, meeting_id: str, client: AudioClient) -> None:
    """Audio PC as a Carbonio client does it: offer, answer by event, then unmute."""
    status, body = await server.call("PUT", f"/meetings/{meeting_id}/audio/offer", token, {"sdp": await client.offer()})
    assert status == 204, body
    answered = await events.wait("MEETING_AUDIO_ANSWERED", timeout=10)
    await bounded(client.pc.setRemoteDescription(RTCSessionDescription(answered["sdp"], "answer")))
    status, body = await server.call("PUT", f"/meetings/{meeting_id}/audio", token, {"enabled": True})
    assert status == 204, body


async def _publish(server, token: str, events, meeting_id: str, pub: Publisher) -> None:
    status, body = await server.call(
        "PUT",
        f"/meetings/{meeting_id}/media",
        token,
        {"type": "video", "enabled": True, "sdp": await pub.offer()},
    )
    assert status == 204, body
    answered = await events.wait("MEETING_SDP_ANSWERED", timeout=10)
    await bounded(pub.accept(answered["sdp"]))


def _assert_tones(path: Path, early: set[float], late: set[float]) -> None:
    """The mix's first second holds the `early` tones, its last second the `late` ones."""
    import numpy as np

    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == "audio")
        chunks = []
        for frame in container.decode(stream):
            data = frame.to_ndarray()
            if not frame.format.is_planar:  # interleaved: one row of channel-interleaved samples
                data = data.reshape(-1, frame.layout.nb_channels).T
            chunks.append(data[0].astype(float))
            rate = frame.sample_rate
    samples = np.concatenate(chunks)

    def tones(part: np.ndarray) -> set[float]:
        spectrum = np.abs(np.fft.rfft(part * np.hanning(len(part))))
        freqs = np.fft.rfftfreq(len(part), 1 / rate)
        peak = spectrum.max()
        return {
            f
            for f in (440.0, 700.0, 1000.0)  # 1000 Hz: nobody sends it
            if spectrum[np.abs(freqs - f) < 15].max() > 0.1 * peak
        }

    assert tones(samples[int(0.2 * rate) : int(1.2 * rate)]) == early
    assert tones(samples[-int(1.2 * rate) : -int(0.2 * rate)]) == late


def _streams(path: Path) -> dict[str, dict]:
    """Per track title: codec, packet count, duration (s), start (s), decoded counters."""
    out: dict[str, dict] = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            out[stream.metadata.get("title", str(stream.index))] = {
                "codec": stream.codec_context.name,
                "packets": 0,
                "pts": [],
                "counters": [],
            }
    with av.open(str(path)) as container:
        titles = {s.index: s.metadata.get("title", str(s.index)) for s in container.streams}
        for packet in container.demux():
            if packet.dts is None:
                continue
            info = out[titles[packet.stream.index]]
            info["packets"] += 1
            info["pts"].append(float(packet.pts * packet.time_base))
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    info["counters"].append(read_counter(frame))
    for info in out.values():
        info["start"] = info["pts"][0] if info["pts"] else None
        info["duration"] = info["pts"][-1] - info["pts"][0] if info["pts"] else 0.0
    return out


async def test_two_publishers_one_late_recorded_into_one_file(server):
    alice, bob, carol, room = new_id(), new_id(), new_id(), new_id()
    alice_token = server.token(alice, {room: "owner"})
    bob_token = server.token(bob, {room: "member"})
    carol_token = server.token(carol, {room: "member"})
    meeting_id = await _meeting(server, alice_token, room)
    alice_events = await _join(server, alice_token, meeting_id)
    bob_events = await _join(server, bob_token, meeting_id)
    carol_events = await server.events(carol_token)  # a room member, not a participant

    # Rules: a non-owner participant may not record (403); a non-participant gets 404.
    status, body = await server.call("POST", f"/meetings/{meeting_id}/startRecording", bob_token)
    assert status == 403, body
    status, body = await server.call("POST", f"/meetings/{meeting_id}/startRecording", carol_token)
    assert status == 404, body
    # Stopping without a recording is a no-op.
    status, _ = await server.call(
        "POST", f"/meetings/{meeting_id}/stopRecording", alice_token, {"name": "x", "folderId": "f"}
    )
    assert status == 204

    alice_pub = Publisher("VP8", tint=10)
    bob_pub = Publisher("H264", tint=90, start=5000)
    alice_mic, bob_mic = AudioClient(alice, 440.0), AudioClient(bob, 700.0)
    try:
        await _publish(server, alice_token, alice_events, meeting_id, alice_pub)
        await _talk(server, alice_token, alice_events, meeting_id, alice_mic)
        recording_since = time.monotonic()
        status, _ = await server.call("POST", f"/meetings/{meeting_id}/startRecording", alice_token)
        assert status == 204
        started = await bob_events.wait("MEETING_RECORDING_STARTED")
        assert started["userId"] == alice and started["meetingId"] == meeting_id
        await alice_events.wait("MEETING_RECORDING_STARTED")
        status, meeting = await server.call("GET", f"/meetings/{meeting_id}", alice_token)
        assert meeting["recUserId"] == alice and "recStartedAt" in meeting
        # A second start changes nothing.
        status, _ = await server.call("POST", f"/meetings/{meeting_id}/startRecording", alice_token)
        assert status == 204
        await asyncio.sleep(1.5)
        alice_sent_at_late = alice_pub.track.count
        await _publish(server, bob_token, bob_events, meeting_id, bob_pub)
        await _talk(server, bob_token, bob_events, meeting_id, bob_mic)
        bob_first = bob_pub.track.count
        await asyncio.sleep(2.0)

        for bad in (
            {"name": "../x", "folderId": "f"},
            {"name": "a", "folderId": ".."},
            {"name": "a\x01", "folderId": "f"},
            {"name": "", "folderId": "f"},
            {"name": "a" * 129, "folderId": "f"},
            {"name": "a", "folderId": "x\\y"},
        ):
            status, body = await server.call("POST", f"/meetings/{meeting_id}/stopRecording", alice_token, bad)
            assert status == 400, (bad, body)
        target = server.config.recording_path / "team" / "weekly.mkv"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"an older recording")  # never overwritten
        status, _ = await server.call(
            "POST",
            f"/meetings/{meeting_id}/stopRecording",
            alice_token,
            {"name": "weekly", "folderId": "team"},
        )
        assert status == 204
        # Recorded for 3.5 s of sleeps plus Bob's set-up (longer on a loaded machine).
        recorded_for = time.monotonic() - recording_since
        alice_sent = alice_pub.track.count
        bob_sent = bob_pub.track.count - bob_first
        stopped = await bob_events.wait("MEETING_RECORDING_STOPPED")
        assert stopped["userId"] == alice
        await carol_events.settle()
        assert not carol_events.of_type("MEETING_RECORDING_STARTED")
        assert not carol_events.of_type("MEETING_RECORDING_STOPPED")
    finally:
        for client in (alice_pub, bob_pub, alice_mic, bob_mic):
            await client.close()

    assert target.read_bytes() == b"an older recording"
    final = target.with_name("weekly-1.mkv")
    streams = _streams(final)
    assert set(streams) == {f"{alice}/video", f"{bob}/video", "audio mix"}
    mix = streams["audio mix"]
    assert mix["codec"] == "opus"
    assert 3.0 <= mix["duration"] <= recorded_for + 0.1 and mix["packets"] >= 0.8 * 50 * mix["duration"]
    _assert_tones(final, early={440.0}, late={440.0, 700.0})
    a, b = streams[f"{alice}/video"], streams[f"{bob}/video"]
    assert a["codec"] == "vp8" and b["codec"] == "h264"
    # Alice recorded for ~3.5 s from a keyframe on; Bob for ~2 s, starting ~1.5 s in.
    assert 0.75 * 3.5 * 30 <= a["packets"] <= alice_sent
    assert 0.6 * bob_sent <= b["packets"] <= bob_sent + 2
    assert 2.8 <= a["duration"] <= recorded_for + 0.1 and 1.4 <= b["duration"] <= 2.6
    assert 1.0 <= b["start"] - a["start"] <= 2.5
    # Frames decode, show what was sent, in order.
    good_a = [c for c in a["counters"] if 0 <= c <= alice_sent]
    good_b = [c - 5000 for c in b["counters"] if 5000 <= c <= 5000 + bob_pub.track.count]
    assert len(good_a) >= 0.9 * a["packets"] and good_a == sorted(good_a)
    assert len(good_b) >= 0.9 * b["packets"] and good_b == sorted(good_b)
    assert good_a[0] < alice_sent_at_late

    rows = await server.app[STORE].recordings(meeting_id)
    assert len(rows) == 1
    row = rows[0]
    assert row.status == "STOPPED" and row.starter_id == alice
    assert row.path == str(final) and row.size_bytes == final.stat().st_size
    assert row.stopped_at >= row.started_at


async def test_meeting_stop_while_recording_finalises_to_fallback(server):
    alice, room = new_id(), new_id()
    token = server.token(alice, {room: "owner"})
    meeting_id = await _meeting(server, token, room)
    events = await _join(server, token, meeting_id)
    pub = Publisher("VP8")
    try:
        await _publish(server, token, events, meeting_id, pub)
        status, _ = await server.call("POST", f"/meetings/{meeting_id}/startRecording", token)
        assert status == 204
        await asyncio.sleep(1.5)
        status, _ = await server.call("POST", f"/meetings/{meeting_id}/stop", token)
        assert status == 200
        await events.wait("MEETING_STOPPED")
        await events.settle()
        assert not events.of_type("MEETING_RECORDING_STOPPED")  # only on stopRecording
    finally:
        await pub.close()
    folder = server.config.recording_path / f"meeting_{meeting_id}"
    (final,) = list(folder.glob("*.mkv"))
    assert len(final.stem) == len("20260101T000000Z") and final.stem.endswith("Z")
    streams = _streams(final)
    assert streams[f"{alice}/video"]["packets"] >= 20
    (row,) = await server.app[STORE].recordings(meeting_id)
    assert row.status == "STOPPED" and row.path == str(final)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_http(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server exited"
            try:
                async with http.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("server did not start")


def _serve(data_dir: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "MEETING_SFU_SERVER_PORT": str(port),
        "MEETING_SFU_STORAGE_DATA_DIR": str(data_dir),
        "MEETING_SFU_AUTH_JWT_SECRET": SECRET,
        "MEETING_SFU_LOGGING_LEVEL": "warning",
    }
    return subprocess.Popen([sys.executable, "-m", "control_api.cli", "serve"], env=env)


async def test_recording_survives_sigkill_and_is_recovered_on_restart(tmp_path):
    data_dir = tmp_path / "data"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(data_dir, port)
    alice, room = new_id(), new_id()
    token = TokenAuthority(SECRET).mint(alice, rooms={room: "owner"})
    headers = {"Authorization": f"Bearer {token}"}
    pub = Publisher("VP8")
    try:
        await _wait_http(url, proc)
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(
                url + "/meetings", json={"name": "m", "roomId": room, "meetingType": "permanent"}
            ) as r:
                meeting_id = (await r.json())["id"]
            async with http.post(f"{url}/meetings/{meeting_id}/start") as r:
                assert r.status == 200
            ws = await http.ws_connect(url.replace("http", "ws") + "/events")
            queue_id = (await ws.receive_json(timeout=5))["queueId"]
            async with http.post(
                f"{url}/meetings/{meeting_id}/join",
                json={"audioStreamEnabled": False, "videoStreamEnabled": False},
                headers={"queue-id": queue_id},
            ) as r:
                assert r.status == 200
            async with http.put(
                f"{url}/meetings/{meeting_id}/media", json={"type": "video", "enabled": True, "sdp": await pub.offer()}
            ) as r:
                assert r.status == 204
            while True:
                msg = await ws.receive_json(timeout=10)
                if msg["type"] == "MEETING_SDP_ANSWERED":
                    break
            await bounded(pub.accept(msg["sdp"]))
            async with http.post(f"{url}/meetings/{meeting_id}/startRecording") as r:
                assert r.status == 204
            await asyncio.sleep(2.5)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            await ws.close()
    finally:
        await pub.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    # What the killed process left: a part that opens and decodes up to near the kill point.
    (work,) = list((data_dir / "recordings-in-progress").iterdir())
    (part,) = list(work.glob("*.mkv"))
    with av.open(str(part)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 45  # ~75 frames sent in 2.5 s; a cluster of at most 0.5 s may be lost

    # A restart stops every meeting and recovers the cut recording into the fallback path.
    proc = _serve(data_dir, port)
    try:
        await _wait_http(url, proc)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
    (final,) = list((data_dir / "recordings" / f"meeting_{meeting_id}").glob("*.mkv"))
    with av.open(str(final)) as container:
        assert sum(1 for _ in container.decode(video=0)) >= 45
    assert not part.exists()
