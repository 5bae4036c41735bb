"""Recording file names: nothing is ever overwritten, even when two recordings are stopped at
the same instant with the same {name, folderId}, and a name the file system cannot hold is a
400 that leaves the recording running (DESIGN section 7)."""

from __future__ import annotations

import asyncio

import av

from control_api.keys import STORE
from tests.helpers import new_id
from tests.recorder.test_meeting_recording import _join, _meeting, _publish, _streams, server  # noqa: F401
from tests.sfu.clients import Publisher

ROUNDS = 6


async def _recording_meeting(server):  # noqa: F811
    owner, room = new_id(), new_id()
    token = server.token(owner, {room: "owner"})
    meeting_id = await _meeting(server, token, room)
    events = await _join(server, token, meeting_id)
    pub = Publisher("VP8")
    await _publish(server, token, events, meeting_id, pub)
    return owner, token, meeting_id, events, pub


def _video_frames(path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream))


async def test_recordings_stopped_at_once_with_one_name_keep_both(server):  # noqa: F811
    meetings = [await _recording_meeting(server), await _recording_meeting(server)]
    body = {"name": "weekly", "folderId": "team"}
    try:
        for _ in range(ROUNDS):
            for _, token, meeting_id, _, _ in meetings:
                status, _ = await server.call("POST", f"/meetings/{meeting_id}/startRecording", token)
                assert status == 204
            await asyncio.sleep(0.8)
            answers = await asyncio.gather(
                *(server.call("POST", f"/meetings/{m}/stopRecording", t, body) for _, t, m, _, _ in meetings)
            )
            assert [status for status, _ in answers] == [204, 204], answers
    finally:
        for *_, pub in meetings:
            await pub.close()

    folder = server.config.recording_path / "team"
    files = sorted(folder.iterdir())
    names = ["weekly.mkv"] + [f"weekly-{n}.mkv" for n in range(1, 2 * ROUNDS)]
    assert sorted(p.name for p in files) == sorted(names)  # no temporary file left either
    rows = [r for _, _, m, _, _ in meetings for r in await server.app[STORE].recordings(m)]
    assert len(rows) == 2 * ROUNDS
    assert sorted(r.path for r in rows) == sorted(str(folder / n) for n in names)
    for row in rows:
        assert row.size_bytes == (folder / row.path).stat().st_size > 0
    for path in files:
        assert _video_frames(path) >= 5, path
        (title,) = _streams(path)
        owners = {owner for owner, *_ in meetings}
        assert title.removesuffix("/video") in owners
    # Each meeting's rows name files holding its own publisher's track.
    for owner, _, meeting_id, _, _ in meetings:
        for row in await server.app[STORE].recordings(meeting_id):
            assert set(_streams(row.path)) == {f"{owner}/video"}


async def test_names_too_long_for_the_file_system_are_refused_and_the_recording_goes_on(server):  # noqa: F811
    owner, token, meeting_id, events, pub = await _recording_meeting(server)
    try:
        status, _ = await server.call("POST", f"/meetings/{meeting_id}/startRecording", token)
        assert status == 204
        await asyncio.sleep(1.0)
        for bad in (
            {"name": "é" * 128, "folderId": "f"},  # 256 bytes
            {"name": "\U0001f600" * 63, "folderId": "f"},  # 252 bytes, 256 with ".mkv"
            {"name": "é" * 122 + "ab", "folderId": "f"},  # 246 bytes: no room for "-99999.mkv"
            {"name": "a", "folderId": "é" * 128},
            {"name": "a", "folderId": "\U0001f600" * 64},
        ):
            status, answer = await server.call("POST", f"/meetings/{meeting_id}/stopRecording", token, bad)
            assert status == 400, (bad, answer)
            assert answer["error"] == "invalid_field"
        # Nothing changed: still recording, no event, no file, no folder.
        status, meeting = await server.call("GET", f"/meetings/{meeting_id}", token)
        assert meeting["recUserId"] == owner
        await events.settle()
        assert not events.of_type("MEETING_RECORDING_STOPPED")
        assert not server.config.recording_path.exists() or not any(server.config.recording_path.iterdir())

        # The longest name that fits, with a suffix because it is taken, finalises properly.
        longest = "é" * 122 + "a"  # 245 bytes
        folder = "\U0001f600" * 61 + "a"  # 245 bytes
        taken = server.config.recording_path / folder / f"{longest}.mkv"
        taken.parent.mkdir(parents=True)
        taken.write_bytes(b"older")
        status, _ = await server.call(
            "POST", f"/meetings/{meeting_id}/stopRecording", token, {"name": longest, "folderId": folder}
        )
        assert status == 204
        await events.wait("MEETING_RECORDING_STOPPED")
    finally:
        await pub.close()
    assert taken.read_bytes() == b"older"
    final = taken.with_name(f"{longest}-1.mkv")
    assert _video_frames(final) >= 20
    (row,) = await server.app[STORE].recordings(meeting_id)
    assert row.status == "STOPPED" and row.path == str(final)
