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
    return service._routers[meeting]
