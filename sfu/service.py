"""LocalMediaService: the MediaService of one process, one Router per meeting plus its audio bridge.

Video and screen go through the meeting's Router (RTP pass-through); audio through its
`sfu.audio.AudioBridge`. A recording is whatever `recorder_factory` builds for the Router and the
bridge (the media worker composes `recorder` in; `sfu` itself never imports it). This is what runs
inside each media worker process, and what unit tests drive in-process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from . import aiortc_hooks, fastpath, peer
from .api import (
    BAD_KIND,
    NO_OFFER,
    UNAVAILABLE,
    EventQueue,
    MediaError,
    MediaEvent,
    RecordingResult,
    StatsReport,
    StreamKind,
    StreamRef,
    SubscribedStream,
    TalkingChanged,
)
from .audio import AudioBridge
from .metrics import MediaStats
from .router import Router
from .settings import MediaPlaneSettings

log = logging.getLogger("meeting_sfu.sfu.service")

_KINDS = ("video", "screen")


class MeetingRecorder(Protocol):
    """What a recording of one meeting must offer the media service."""

    def attach_bridge(self, bridge: AudioBridge) -> None: ...

    def detach(self) -> None: ...

    async def finalize(self, final_path: str) -> int: ...


RecorderFactory = Callable[[Router, str, MediaStats], MeetingRecorder]


class LocalMediaService:
    """MediaService for routers living in this process (see module docstring)."""

    def __init__(
        self,
        settings: MediaPlaneSettings | None = None,
        *,
        recorder_factory: RecorderFactory | None = None,
        event_sink: Callable[[MediaEvent], None] | None = None,
        check_hooks: bool = True,
    ) -> None:
        if check_hooks:
            aiortc_hooks.check_private_api()
        fastpath.announce()
        self.settings = settings if settings is not None else MediaPlaneSettings()
        self._recorder_factory = recorder_factory
        self._routers: dict[str, Router] = {}
        self._bridges: dict[str, AudioBridge] = {}
        self._recordings: dict[str, MeetingRecorder] = {}
        self._events = EventQueue()
        # A media worker passes its channel here: each event is written as it happens, so it
        # reaches the control plane before the answer of the request that caused it.
        self._event_sink = event_sink
        self.stats = MediaStats()
        self.closed = False

    async def start(self) -> None:
        """Nothing to start: the routers live in this process."""

    # --- events -----------------------------------------------------------------------------

    def _emit(self, event: MediaEvent) -> None:
        if self._event_sink is not None:
            self._event_sink(event)
        else:
            self._events.put(event)

    def events(self) -> AsyncIterator[MediaEvent]:
        return aiter(self._events)

    # --- meetings ---------------------------------------------------------------------------

    def router(self, meeting_id: str) -> Router:
        """The meeting's Router, created on first use (open_meeting is optional)."""
        if self.closed:
            raise MediaError(UNAVAILABLE, "the media service is closed")
        router = self._routers.get(meeting_id)
        if router is None or router.closed:
            router = self._routers[meeting_id] = Router(
                meeting_id,
                self._emit,
                self.stats,
                max_video_bitrate=self.settings.max_video_bitrate,
                max_screen_bitrate=self.settings.max_screen_bitrate,
            )
        return router

    async def open_meeting(self, meeting_id: str) -> None:
        self.router(meeting_id)

    async def close_meeting(self, meeting_id: str) -> None:
        recording = self._recordings.pop(meeting_id, None)
        if recording is not None:
            recording.detach()  # the control plane finalises it first; this is a safety net
        router = self._routers.pop(meeting_id, None)
        bridge = self._bridges.pop(meeting_id, None)
        if router is not None:
            await router.close()
        if bridge is not None:
            try:
                await bridge.close()
            except Exception:
                log.exception("audio bridge close failed meeting=%s", meeting_id)

    async def remove_participant(self, meeting_id: str, user_id: str) -> None:
        router = self._routers.get(meeting_id)
        if router is not None:
            await router.remove_participant(user_id)
        bridge = self._bridges.get(meeting_id)
        if bridge is not None:
            try:
                await bridge.remove(user_id)
            except Exception:
                log.exception("audio bridge remove failed meeting=%s", meeting_id)

    # --- video and screen -------------------------------------------------------------------

    async def publish(self, meeting_id: str, user_id: str, kind: StreamKind, offer_sdp: str) -> str:
        _check_kind(kind)
        return await self.router(meeting_id).publish(user_id, kind, offer_sdp)

    async def unpublish(self, meeting_id: str, user_id: str, kind: StreamKind) -> None:
        _check_kind(kind)
        router = self._routers.get(meeting_id)
        if router is not None:
            await router.unpublish(user_id, kind)

    async def update_subscriptions(
        self,
        meeting_id: str,
        user_id: str,
        subscribe: list[StreamRef],
        unsubscribe: list[StreamRef],
    ) -> str | None:
        for ref in [*subscribe, *unsubscribe]:
            _check_kind(ref.kind)
        return await self.router(meeting_id).update_subscriptions(user_id, subscribe, unsubscribe)

    async def answer_subscriber(
        self, meeting_id: str, user_id: str, answer_sdp: str
    ) -> list[SubscribedStream]:
        router = self._routers.get(meeting_id)
        if router is None:
            raise MediaError(NO_OFFER, "no receive connection was offered to this user")
        return await router.answer_subscriber(user_id, answer_sdp)

    # --- audio ------------------------------------------------------------------------------

    def _bridge(self, meeting_id: str) -> AudioBridge:
        bridge = self._bridges.get(meeting_id)
        if bridge is not None:
            return bridge
        self.router(meeting_id)  # the meeting exists for the media plane from now on

        def on_talking(user_id: str, is_talking: bool) -> None:
            self._emit(TalkingChanged(meeting_id, user_id, is_talking))

        bridge = self._bridges[meeting_id] = AudioBridge(
            meeting_id, on_talking, self.settings.audio, stats=self.stats
        )
        recording = self._recordings.get(meeting_id)
        if recording is not None:
            recording.attach_bridge(bridge)
        return bridge

    async def audio_offer(self, meeting_id: str, user_id: str, offer_sdp: str) -> str:
        return await self._bridge(meeting_id).offer(user_id, offer_sdp)

    async def set_audio_enabled(self, meeting_id: str, user_id: str, enabled: bool) -> None:
        self._bridge(meeting_id).set_enabled(user_id, enabled)

    # --- recording --------------------------------------------------------------------------

    async def start_recording(self, meeting_id: str, work_path: str) -> None:
        if meeting_id in self._recordings:
            return
        if self._recorder_factory is None:
            raise MediaError(UNAVAILABLE, "this media plane has no recorder")
        recording = self._recorder_factory(self.router(meeting_id), work_path, self.stats)
        bridge = self._bridges.get(meeting_id)
        if bridge is not None:
            recording.attach_bridge(bridge)
        self._recordings[meeting_id] = recording

    async def stop_recording(self, meeting_id: str, final_path: str) -> RecordingResult | None:
        recording = self._recordings.pop(meeting_id, None)
        if recording is None:
            return None
        size = await recording.finalize(final_path)
        if size == 0:
            return None  # nothing was recorded: no file
        return RecordingResult(final_path, size)

    # --- service ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This process's counters and live objects, as plain data."""
        body = self.stats.snapshot()
        body["live"] = self.counts()
        return body

    async def stats_report(self) -> StatsReport:
        return StatsReport(workers={"0": self.snapshot()})

    async def close(self) -> None:
        self.closed = True
        meetings = list(self._routers) + [m for m in self._bridges if m not in self._routers]
        for meeting_id in meetings:
            await self.close_meeting(meeting_id)
        peer.close_ice()  # the process's shared UDP sockets

    def counts(self) -> dict[str, int]:
        """Live objects: meetings, producers, subscribers (receive PCs), consumers, audio PCs."""
        out = {"meetings": len(self._routers), "producers": 0, "subscribers": 0, "consumers": 0}
        for router in self._routers.values():
            for k, v in router.counts().items():
                out[k] += v
        out["audio_participants"] = sum(b.participant_count for b in self._bridges.values())
        return out


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise MediaError(BAD_KIND, f"unknown stream type {kind!r}")


__all__ = ["LocalMediaService", "MeetingRecorder", "RecorderFactory"]
