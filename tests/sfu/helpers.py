"""Shared steps of the SFU tests (driving LocalMediaService directly)."""

from sfu.api import StreamRef

from .clients import Subscriber, bounded

MEETING = "meeting-1"


async def subscribe(service, sub: Subscriber, user: str, refs=(), unrefs=(), meeting: str = MEETING):
    """One subscribe/unsubscribe round trip; returns the streams now forwarded."""
    offer = await bounded(service.update_subscriptions(meeting, user, list(refs), list(unrefs)))
    assert offer is not None
    answer = await bounded(sub.answer(offer))
    return await bounded(service.answer_subscriber(meeting, user, answer))


def ref(user: str, kind: str = "video") -> StreamRef:
    return StreamRef(user, kind)


def router(service, meeting: str = MEETING):
    """The meeting's Router of an in-process service (for tests of the Router itself)."""
    return service.router(meeting)


async def media_stats(service):
    """The service's counters summed over its workers (what /metrics shows)."""
    from sfu.metrics import MediaStats

    report = await bounded(service.stats_report())
    return MediaStats.merged(report.workers.values())


async def live_counts(service) -> dict[str, int]:
    """Live objects of the service: meetings, producers, subscribers, consumers, audio PCs."""
    report = await bounded(service.stats_report())
    total: dict[str, int] = {}
    for snap in report.workers.values():
        for key, n in (snap.get("live") or {}).items():
            total[key] = total.get(key, 0) + n
    return total


async def counts_become(service, timeout: float = 10.0, **expected: int) -> None:
    """Wait until the service's live counts include `expected` (e.g. consumers=0)."""
    import asyncio

    async def loop() -> None:
        while True:
            counts = await live_counts(service)
            if all(counts.get(k) == v for k, v in expected.items()):
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), timeout)
