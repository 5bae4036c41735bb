"""The boundary between the control plane and the media plane.

Everything that crosses it is plain data (ids, SDP strings, flags): the control plane calls the
async methods of a `MediaService` and reads its `MediaEvent`s from `events()`; neither side holds
the other's objects. With media workers (DESIGN §9.1) the requests, answers and events cross a
process boundary as length-prefixed messages (`sfu.channel`), so nothing here may be a callback,
a live object or an HTTP notion: a refusal is a `MediaError` with a media error code, which the
control plane maps to its own status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol

log = logging.getLogger("meeting_sfu.sfu")

StreamKind = Literal["video", "screen"]
PeerKind = Literal["audio", "video", "screen", "subscriber"]

# Media error codes: what the media plane may refuse, and why (the control plane maps them).
BAD_SDP = "bad_sdp"  # the SDP cannot be used (syntax, no media section...)
BAD_KIND = "bad_kind"  # an unknown stream type
UNSUPPORTED_CODEC = "unsupported_codec"  # no codec the node forwards
NO_OFFER = "no_offer"  # an answer with no offer waiting for it
CLOSED = "closed"  # the meeting's media (or the PC) is closed
GONE = "gone"  # the participant left while the request ran
UNAVAILABLE = "unavailable"  # the media plane cannot serve now (shut down, no worker)
WORKER_LOST = "worker_lost"  # the worker holding the meeting died during the request
TIMEOUT = "timeout"  # the worker did not answer in time
INTERNAL = "internal"  # a defect of the media plane (logged where it happened)
ERROR_CODES = frozenset(
    {BAD_SDP, BAD_KIND, UNSUPPORTED_CODEC, NO_OFFER, CLOSED, GONE, UNAVAILABLE, WORKER_LOST, TIMEOUT, INTERNAL}
)


class MediaError(Exception):
    """A request the media plane refuses: `code` is one of the media error codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_wire(cls, data: Any) -> MediaError:
        if not isinstance(data, dict):
            return cls(UNAVAILABLE, "malformed error from the media plane")
        return cls(str(data.get("code", UNAVAILABLE)), str(data.get("message", "")))

    def __repr__(self) -> str:
        return f"MediaError({self.code!r}, {self.message!r})"


def bad_sdp(message: str) -> MediaError:
    return MediaError(BAD_SDP, message)


@dataclass(frozen=True, slots=True)
class StreamRef:
    """A published stream: whose, and which kind; `quality` ("low" | "medium" | "high", or None)
    caps the simulcast layer a subscriber gets (DESIGN §6.1)."""

    user_id: str
    kind: StreamKind
    quality: str | None = None


@dataclass(frozen=True, slots=True)
class SubscribedStream:
    """A stream forwarded on a subscriber's receive PC, on the m-line `mid`."""

    user_id: str
    kind: StreamKind
    mid: str


@dataclass(frozen=True, slots=True)
class RecordingResult:
    path: str
    size_bytes: int


# --- events from the media plane -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProducerStateChanged:
    """A publisher's stream became active (first RTP) or ended (disabled, PC closed, left)."""

    meeting_id: str
    user_id: str
    kind: StreamKind
    active: bool


@dataclass(frozen=True, slots=True)
class SubscriberOffer:
    """The server re-offers a subscriber's receive PC on its own (a producer it forwarded ended)."""

    meeting_id: str
    user_id: str
    sdp: str


@dataclass(frozen=True, slots=True)
class TalkingChanged:
    meeting_id: str
    user_id: str
    is_talking: bool


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """A participant's peer connection closed or failed without being asked to."""

    meeting_id: str
    user_id: str
    peer: PeerKind


@dataclass(frozen=True, slots=True)
class MeetingLost:
    """The media plane lost every PC of the meeting at once (its worker died): the control plane
    stops the meeting (and recovers a recording that ran there from its parts on disk)."""

    meeting_id: str
    reason: str


MediaEvent = ProducerStateChanged | SubscriberOffer | TalkingChanged | PeerClosed | MeetingLost
_EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (ProducerStateChanged, SubscriberOffer, TalkingChanged, PeerClosed, MeetingLost)
}


def event_to_wire(event: MediaEvent) -> dict[str, Any]:
    body = asdict(event)
    body["type"] = type(event).__name__
    return body


def event_from_wire(data: dict[str, Any]) -> MediaEvent:
    """Rebuild an event; ValueError when it is not one."""
    cls = _EVENT_TYPES.get(data.get("type", "")) if isinstance(data, dict) else None
    if cls is None:
        raise ValueError(f"not a media event: {data!r:.80}")
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k in names}
    return cls(**values)


class EventQueue:
    """The media plane's events waiting for their one reader (bounded: beyond `limit` unread
    events something is stuck, and later ones are dropped and logged)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._queue: asyncio.Queue[MediaEvent] | None = None  # made on the running loop

    def _get(self) -> asyncio.Queue[MediaEvent]:
        if self._queue is None:
            self._queue = asyncio.Queue(self.limit)
        return self._queue

    def put(self, event: MediaEvent) -> None:
        try:
            self._get().put_nowait(event)
        except asyncio.QueueFull:
            log.error("media event dropped (nobody reads events) event=%s", type(event).__name__)

    async def __aiter__(self) -> AsyncIterator[MediaEvent]:
        queue = self._get()
        while True:
            yield await queue.get()


class MediaService(Protocol):
    """What the control plane may ask of the media plane. All calls are idempotent where
    the wording allows ("close", "remove"); ids are strings (UUIDs)."""

    async def start(self) -> None:
        """Be ready to serve (start worker processes); RuntimeError when that fails. Media calls
        made before it start the service themselves."""

    def events(self) -> AsyncIterator[MediaEvent]:
        """The media plane's events, in the order they happened (one reader)."""

    async def open_meeting(self, meeting_id: str) -> None: ...

    async def close_meeting(self, meeting_id: str) -> None:
        """Close every PC, producer and consumer of the meeting (a stop)."""

    async def remove_participant(self, meeting_id: str, user_id: str) -> None:
        """Close the participant's four PCs and what hangs on them (leave, clash, socket drop)."""

    async def publish(self, meeting_id: str, user_id: str, kind: StreamKind, offer_sdp: str) -> str:
        """Answer a publisher's sendonly offer (new PC, or renegotiation of the existing one)."""

    async def unpublish(self, meeting_id: str, user_id: str, kind: StreamKind) -> None: ...

    async def update_subscriptions(
        self,
        meeting_id: str,
        user_id: str,
        subscribe: list[StreamRef],
        unsubscribe: list[StreamRef],
    ) -> str | None:
        """Change what the user receives; returns the server's new offer for the receive PC,
        or None when nothing changed. Streams that are not published are skipped."""

    async def answer_subscriber(
        self, meeting_id: str, user_id: str, answer_sdp: str
    ) -> list[SubscribedStream]:
        """Apply the client's answer to the receive PC; returns every stream now forwarded."""

    async def audio_offer(self, meeting_id: str, user_id: str, offer_sdp: str) -> str:
        """Answer the client's sendrecv audio offer; the PC returns the mix of everyone else."""

    async def set_audio_enabled(self, meeting_id: str, user_id: str, enabled: bool) -> None: ...

    async def start_recording(self, meeting_id: str, work_path: str) -> None:
        """Record the meeting's producers and audio mix; `work_path` is a directory for the
        recorder's crash-safe parts (see recorder.recording)."""

    async def stop_recording(self, meeting_id: str, final_path: str) -> RecordingResult | None: ...

    async def stats_report(self) -> StatsReport:
        """A fresh snapshot of the media plane's counters (see `sfu.metrics`)."""

    async def close(self) -> None:
        """Close everything (server shutdown)."""


@dataclass(frozen=True)
class StatsReport:
    """Counters of the media plane: `workers` maps a worker label ("0".."N-1") to its
    `MediaStats.snapshot()`; `retired` holds the counters of workers that died (so sums never go
    backwards); `restarts` counts worker restarts."""

    workers: dict[str, dict[str, Any]]
    retired: dict[str, Any] | None = None
    restarts: int = 0


__all__ = [
    "BAD_KIND",
    "BAD_SDP",
    "CLOSED",
    "ERROR_CODES",
    "EventQueue",
    "GONE",
    "INTERNAL",
    "NO_OFFER",
    "TIMEOUT",
    "UNAVAILABLE",
    "UNSUPPORTED_CODEC",
    "WORKER_LOST",
    "MediaError",
    "MediaEvent",
    "MediaService",
    "MeetingLost",
    "PeerClosed",
    "PeerKind",
    "ProducerStateChanged",
    "RecordingResult",
    "StatsReport",
    "StreamKind",
    "StreamRef",
    "SubscribedStream",
    "SubscriberOffer",
    "TalkingChanged",
    "bad_sdp",
    "event_from_wire",
    "event_to_wire",
]
