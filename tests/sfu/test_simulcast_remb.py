"""REMB towards publishers (DESIGN §6.1): the server's own estimate of what it receives, never above
`[media] max_video_bitrate`; and the setting crosses to media workers."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

from control_api.workers import WorkerPool
from recorder.meeting import MeetingRecording
from sfu import aiortc_hooks
from sfu.service import LocalMediaService
from sfu.settings import MediaPlaneSettings

from .clients import Publisher, eventually
from .conftest import running

CAP = 50_000  # aiortc's estimate starts about there and rises


@pytest.fixture(params=["local", "workers"])
async def capped(request, events):
    settings = MediaPlaneSettings(ice_addresses=("127.0.0.1",), max_video_bitrate=CAP)
    if request.param == "local":
        svc = LocalMediaService(settings=settings, recorder_factory=MeetingRecording)
    else:
        svc = WorkerPool(settings, 1)
    async with running(svc, events) as svc:
        yield svc


async def test_publisher_remb_is_capped(capped):
    publisher = Publisher()
    rembs: list[int] = []

    def on_rtcp(packet) -> bool:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            rembs.append(unpack_remb_fci(packet.fci)[0])
        return False

    aiortc_hooks.hook_sender_rtcp(publisher.transceiver.sender, on_rtcp)
    try:
        await publisher.publish(capped, "m-remb", "pub")
        # the estimate passes the cap within seconds; every REMB stays at or under it
        try:
            await eventually(lambda: CAP in rembs, timeout=20)
        except TimeoutError:
            raise AssertionError(rembs[-20:]) from None
        await asyncio.sleep(1.0)
        assert max(rembs) == CAP, rembs
    finally:
        await publisher.close()


def test_bitrate_caps_cross_the_worker_boundary():
    settings = MediaPlaneSettings(max_video_bitrate=1_000_000, max_screen_bitrate=700_000)
    again = MediaPlaneSettings.from_wire(settings.to_wire())
    assert (again.max_video_bitrate, again.max_screen_bitrate) == (1_000_000, 700_000)
    assert MediaPlaneSettings.from_wire({}).max_video_bitrate == 2_500_000


def test_config_keys_reach_the_media_plane():
    from control_api.config import Config, ConfigError

    media = Config().with_overrides({"media": {"max_video_bitrate": 900_000, "max_screen_bitrate": 800_000}}).media
    plane = media.plane_settings()
    assert (plane.max_video_bitrate, plane.max_screen_bitrate) == (900_000, 800_000)
    with pytest.raises(ConfigError):
        Config().with_overrides({"media": {"max_video_bitrate": 10}})
