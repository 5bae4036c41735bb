import asyncio
import contextlib

import pytest

from sfu.api import MediaEvent
from sfu.peer import IceSettings, configure_ice
from sfu.service import LocalMediaService


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


@pytest.fixture
async def service(events):
    svc = LocalMediaService()
    svc.set_listener(events)
    yield svc
    with contextlib.suppress(Exception):
        await asyncio.wait_for(svc.close(), 10)
