import asyncio
import contextlib

import pytest

from control_api.workers import WorkerPool
from recorder.meeting import MeetingRecording
from sfu.api import MediaEvent
from sfu.peer import IceSettings, configure_ice
from sfu.service import LocalMediaService
from sfu.settings import MediaPlaneSettings


class Events:
    """Every event the media plane reported, with a bounded wait."""

    def __init__(self) -> None:
        self.items: list[MediaEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: MediaEvent) -> None:
        self.items.append(event)
        self._changed.set()

    def of(self, cls: type, **fields) -> list:
        return [
            e for e in self.items
            if isinstance(e, cls) and all(getattr(e, k) == v for k, v in fields.items())
        ]

    async def wait(self, cls: type, timeout: float = 10.0, **fields):
        async def loop():
            while True:
                found = self.of(cls, **fields)
                if found:
                    return found[-1]
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(loop(), timeout)


@pytest.fixture(autouse=True)
def loopback_ice():
    configure_ice(IceSettings(addresses=("127.0.0.1",)))
    yield


@pytest.fixture
async def events():
    return Events()


async def _drain(service, events: Events) -> None:
    async for event in service.events():
        events(event)


@contextlib.asynccontextmanager
async def running(svc, events: Events):
    """A media service whose events are collected into `events`, closed afterwards."""
    reader = asyncio.create_task(_drain(svc, events))
    try:
        yield svc
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(svc.close(), 15)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


@pytest.fixture
async def service(events):
    async with running(LocalMediaService(recorder_factory=MeetingRecording), events) as svc:
        yield svc


@pytest.fixture(params=["local", "workers"])
async def media(request, events):
    """Every MediaService the node has: in-process, and the pool of worker processes."""
    if request.param == "local":
        svc = LocalMediaService(recorder_factory=MeetingRecording)
    else:
        svc = WorkerPool(MediaPlaneSettings(ice_addresses=("127.0.0.1",)), 2)
    async with running(svc, events) as svc:
        yield svc


@pytest.fixture(params=["fast", "python"])
def forwarding_path(request, monkeypatch):
    """Both forwarding paths (sfu.fastpath): the compiled one when built (with the lean receive
    path and the lean subscriber RTCP), and pure Python (with aiortc's receive path and RTCP), in
    this process and in worker processes (which read MEETING_SFU_FASTPATH when they start).
    Use it before any service fixture (e.g. `pytest.mark.usefixtures("forwarding_path")`)."""
    from sfu import fastpath

    if request.param == "fast":
        if not fastpath.available:
            pytest.skip(fastpath.describe())
    else:
        monkeypatch.setattr(fastpath, "enabled", False)
        monkeypatch.setattr(fastpath, "lean_receive", False)  # MEETING_SFU_FASTPATH=0 turns it off too
        monkeypatch.setattr(fastpath, "lean_rtcp", False)  # and this
        monkeypatch.setenv(fastpath.ENV, "0")
    return request.param
