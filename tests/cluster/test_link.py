"""RedisLink: a cancelled task stays cancelled, whatever redis-py does with the cancellation."""

from __future__ import annotations

import asyncio
import random

from control_api.cluster import ClusterUnavailable


async def test_a_task_cancelled_during_a_command_ends_at_the_first_cancel(links) -> None:
    """redis-py 8 returns normally (or fails "Connection closed by server") from a command
    cancelled while reading its answer, about once in 30 here; a background loop that goes on
    after an outage would then never end. Without RedisLink.run's check, some of these go on."""
    link = links()
    went_on = 0

    async def loop() -> None:
        while True:
            try:
                await link.run("ping", link.client.ping)
            except ClusterUnavailable:
                await asyncio.sleep(0)  # as the background loops do: go on after an outage

    rng = random.Random(7)
    for _ in range(150):
        task = asyncio.create_task(loop())
        await asyncio.sleep(rng.random() * 0.003)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done:
            went_on += 1
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
    assert went_on == 0
