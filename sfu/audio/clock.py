"""A 20 ms tick on the event loop's clock, corrected for drift (each tick is due at
start + n * period, not one period after the previous tick ran)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("meeting_sfu.sfu.audio")

PERIOD = 0.020
MAX_LATE_TICKS = 5  # further behind than this, skip ticks instead of catching up in a burst


class Ticker:
    """Calls `on_tick(n)` every PERIOD seconds with the tick number n (skipped ticks included,
    so n * period tracks the loop's time) until `stop`."""

    def __init__(self, on_tick: Callable[[int], None], period: float = PERIOD) -> None:
        self.on_tick = on_tick
        self.period = period
        self.skipped = 0
        self.late_max = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.period
        start = loop.time()
        n = 0
        while True:
            n += 1
            due = start + n * period
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -MAX_LATE_TICKS * period:
                behind = int(-delay / period)
                self.skipped += behind
                n += behind
            else:
                late = -delay
                self.late_max = max(self.late_max, late)
                await asyncio.sleep(0)  # let packets in between catch-up ticks
            try:
                self.on_tick(n)
            except Exception:
                log.exception("audio tick failed")


__all__ = ["PERIOD", "Ticker"]
