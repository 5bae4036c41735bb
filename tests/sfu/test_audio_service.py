"""The audio bridge behind LocalMediaService: offers, mute, talking events, leave, meeting close
and the recording of the mix (real aiortc clients on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib

import av
import numpy as np
import pytest

from control_api.meetings import media_status
from sfu.api import MediaError, TalkingChanged

from .clients import eventually
from .helpers import counts_become, media_stats
from .test_audio_bridge import TONES, Client, bounded, hears

MEETING = "meeting-audio"


async def connect(service, user: str) -> Client:
    client = Client(user, TONES[user])
    answer = await bounded(service.audio_offer(MEETING, user, await client.offer()))
    from aiortc import RTCSessionDescription

    await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return client


@pytest.fixture
async def pair(service):
    clients = {u: await connect(service, u) for u in ("alice", "bob")}
    yield clients
    for c in clients.values():
        with contextlib.suppress(Exception):
            await c.close()


@pytest.fixture
async def service(media):
    return media  # these tests hold for every MediaService: in-process and worker processes


async def test_service_mixes_mutes_and_reports_talking(service, events, pair):
    await service.set_audio_enabled(MEETING, "alice", True)
    await hears(pair["bob"], present={"alice"}, absent={"bob"})
    event = await events.wait(TalkingChanged, user_id="alice", is_talking=True)
    assert event.meeting_id == MEETING
    assert not events.of(TalkingChanged, user_id="bob")  # muted: never talking
    await service.set_audio_enabled(MEETING, "alice", False)
    await events.wait(TalkingChanged, user_id="alice", is_talking=False)
    await hears(pair["bob"], present=set(), absent={"alice", "bob"})
    stats = await media_stats(service)  # what /metrics shows for audio
    assert stats.rtp_packets_in["audio"] >= 50 and stats.rtp_bytes_in["audio"] > 1000
    assert stats.rtp_packets_out["audio"] >= 50  # a packet per listener every 20 ms
    assert stats.mixer_tick_seconds.count >= 50
    assert 0 < stats.mixer_tick_seconds.total / stats.mixer_tick_seconds.count < 0.02


async def test_service_leave_and_meeting_close(service, pair):
    await service.set_audio_enabled(MEETING, "alice", True)
    await service.set_audio_enabled(MEETING, "bob", True)
    await hears(pair["bob"], present={"alice"}, absent={"bob"})
    await bounded(service.remove_participant(MEETING, "alice"))
    await counts_become(service, audio_participants=1)
    await bounded(service.close_meeting(MEETING))
    await counts_become(service, audio_participants=0, meetings=0)
    await eventually(lambda: pair["bob"].pc.connectionState == "closed")


async def test_service_garbage_audio_offer_is_400(service):
    with pytest.raises(MediaError) as err:
        await service.audio_offer(MEETING, "alice", "v=0\r\ngarbage")
    assert media_status(err.value) == 400


async def test_recording_holds_the_mix_of_everyone(service, pair, tmp_path):
    await service.set_audio_enabled(MEETING, "alice", True)
    await service.set_audio_enabled(MEETING, "bob", True)
    await service.start_recording(MEETING, str(tmp_path / "work"))
    await asyncio.sleep(1.5)
    final = tmp_path / "out.mkv"
    result = await bounded(service.stop_recording(MEETING, str(final)))
    assert result is not None and final.exists()
    with av.open(str(final)) as container:
        audio = [s for s in container.streams if s.type == "audio"]
        assert len(audio) == 1
        pcm = np.concatenate(
            [f.to_ndarray().reshape(-1) for f in container.decode(audio[0])]
        ).astype(np.float64)
    assert pcm.size > 48000  # over a second of audio
    if np.abs(pcm).max() <= 1.0:  # planar float from the decoder
        pcm = pcm * 32767
    x = pcm[-48000:] / 32767
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    freqs = np.fft.rfftfreq(x.size, 1 / 48000)

    def strength(f: float) -> float:
        return float(spectrum[(freqs > f - 20) & (freqs < f + 20)].max())

    # both speakers are in the recorded mix; carol (not in the meeting) is not
    assert strength(TONES["alice"]) > 20 * strength(TONES["carol"])
    assert strength(TONES["bob"]) > 20 * strength(TONES["carol"])
