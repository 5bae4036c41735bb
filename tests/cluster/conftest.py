"""Cluster tests run on real redis-servers: the session's one (each test under a key prefix of its
own, so tests never see each other's keys or channels), or one of their own that they stop and
start again."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from control_api.cluster import RedisLink
from tests.servers import RedisServer


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def links(redis_server: RedisServer, prefix: str) -> AsyncIterator[Callable[..., RedisLink]]:
    """links() -> a new RedisLink (its own connections) to the session's Redis, under this test's
    prefix: one per simulated node."""
    made: list[RedisLink] = []

    def make(url: str | None = None, **options: object) -> RedisLink:
        link = RedisLink(url or redis_server.url, prefix=prefix, **options)  # type: ignore[arg-type]
        made.append(link)
        return link

    yield make
    for link in made:
        await link.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone, to kill, pause and start again."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/test installs it with apt-get)")
    server = RedisServer(binary)
    try:
        yield server
    finally:
        server.close()


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float, step: float = 0.02) -> float:
    """Waits until `check()` holds (a bool, or an awaitable of one); returns the seconds it took
    (fails the test after `timeout`)."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def holds() -> bool:
        result = check()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    while not await holds():
        if loop.time() - start > timeout:
            raise AssertionError(f"not within {timeout} s")  # (pytest.fail is a BaseException: it hangs the loop)
        await asyncio.sleep(step)
    return loop.time() - start
