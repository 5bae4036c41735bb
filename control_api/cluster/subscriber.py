"""A Redis pub/sub subscription that comes back by itself after Redis went away.

Pub/sub is at most once (as LiveKit's psrpc bus over Redis): what is published while a node is
not subscribed never reaches it. So the subscription says whether it is `ready`, and callers
that need an answer (the relay) refuse at once when it is not, instead of waiting for a timeout.
Messages are handled one at a time, in order, by the reading task: nothing is buffered here,
and a subscriber too slow to keep up is cut by Redis (its client-output-buffer-limit for
pub/sub), then subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from redis.exceptions import TimeoutError as RedisTimeoutError

from .link import UNREACHABLE, RedisLink, stop_task

log = logging.getLogger("meeting_sfu.cluster")

OnMessage = Callable[[str, bytes], Awaitable[None]]


class Subscription:
    """Subscribed to `channels` while started; `on_message(channel, data)` for each message.

    After a lost connection it subscribes again, waiting `retry_seconds` (doubling up to
    `max_retry_seconds`) between attempts. A connection silent for `health_seconds` is pinged;
    no answer within the link's timeout counts as lost.
    """

    def __init__(
        self,
        link: RedisLink,
        channels: Sequence[str],
        on_message: OnMessage,
        *,
        name: str,
        retry_seconds: float = 0.1,
        max_retry_seconds: float = 1.0,
        health_seconds: float = 5.0,
    ) -> None:
        self.link = link
        self.channels = list(channels)
        self.name = name
        self.ready = asyncio.Event()
        self.subscribed = 0  # times (re)subscribed, for tests and logs
        self._on_message = on_message
        self._retry = retry_seconds
        self._max_retry = max_retry_seconds
        self._health = health_seconds
        self._task: asyncio.Task | None = None

    async def start(self, wait: float = 0.0) -> None:
        """Starts the reading task; waits up to `wait` s for the first subscription."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"cluster-sub-{self.name}")
        if wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.ready.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        self.ready.clear()
        await stop_task(task)

    async def _run(self) -> None:
        delay = self._retry
        down = False
        while True:
            pubsub = self.link.pubsub()
            try:
                async with asyncio.timeout(self.link.timeout + 0.5):
                    await pubsub.subscribe(*self.channels)
                self.subscribed += 1
                self.ready.set()
                delay = self._retry
                if down:
                    log.info("cluster subscription resumed name=%s", self.name)
                down = False
                loop = asyncio.get_running_loop()
                heard = loop.time()
                pinged: float | None = None
                while True:
                    message = await pubsub.get_message(timeout=min(1.0, self._health))
                    now = loop.time()
                    if message is not None:
                        heard, pinged = now, None
                    elif pinged is not None and now - pinged > self.link.timeout:
                        # A Redis that keeps the connection but answers nothing (hung, or a
                        # network that lost the path without a reset) is a lost subscription.
                        raise RedisTimeoutError(f"no answer to a ping within {self.link.timeout:g} s")
                    elif pinged is None and now - heard > self._health:
                        pinged = now
                        async with asyncio.timeout(self.link.timeout + 0.5):
                            await pubsub.ping()
                    if message is None or message.get("type") != "message":
                        continue
                    channel = message["channel"]
                    name = channel.decode() if isinstance(channel, bytes) else channel
                    try:
                        await self._on_message(name, message["data"])
                    except Exception:  # one bad message must not end the subscription
                        log.exception("cluster message handling failed name=%s", self.name)
            except UNREACHABLE as exc:
                self.ready.clear()
                if not down:
                    log.warning("cluster subscription lost name=%s error=%s", self.name, exc or type(exc).__name__)
                down = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry)
