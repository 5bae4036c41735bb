"""The boundary between the control plane and the media plane.

Everything that crosses it is plain data (ids, SDP strings, flags) so that routers can later live
in worker processes without `control_api` noticing. The control plane calls the async methods of
a `MediaService`; the media plane reports back through one listener callback with `MediaEvent`
values. Neither side holds the other's objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

StreamKind = Literal["video", "screen"]
PeerKind = Literal["audio", "video", "screen", "subscriber"]


class MediaError(Exception):
    """A request the media plane refuses; `status` is the HTTP status the control plane uses."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_sdp(message: str) -> MediaError:
    return MediaError(400, "bad_sdp", message)


@dataclass(frozen=True, slots=True)
class StreamRef:
    """A published stream: whose, and which kind."""

    user_id: str
    kind: StreamKind


@dataclass(frozen=True, slots=True)
class SubscribedStream:
    """A stream forwarded on a subscriber's receive PC, on the m-line `mid`."""

    user_id: str
    kind: StreamKind
    mid: str


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


MediaEvent = ProducerStateChanged | SubscriberOffer | TalkingChanged | PeerClosed
MediaListener = Callable[[MediaEvent], None]


@dataclass(frozen=True, slots=True)
class RecordingResult:
    path: str
    size_bytes: int


class MediaService(Protocol):
    """What the control plane may ask of the media plane. All calls are idempotent where
    the wording allows ("close", "remove"); ids are strings (UUIDs)."""

    def set_listener(self, listener: MediaListener) -> None: ...

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

    async def close(self) -> None:
        """Close everything (server shutdown)."""
