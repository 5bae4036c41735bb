"""LocalMediaService: the in-process MediaService, one Router per meeting plus the audio bridge.

Video and screen go through the meeting's Router (RTP pass-through). Audio is delegated to
`sfu.audio.AudioBridge`, imported lazily so the SFU works while that package is absent (its
methods then answer 501). Recording attaches a `recorder.MeetingRecording` to the Router's tap
(every producer's RTP) and to the bridge's mix tap (the encoded mix of everyone).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from . import aiortc_hooks, peer
from .api import (
    MediaError,
    MediaEvent,
    MediaListener,
    RecordingResult,
    StreamKind,
    StreamRef,
    SubscribedStream,
    TalkingChanged,
)
from .metrics import MediaStats
from .router import Router

log = logging.getLogger("meeting_sfu.sfu.service")

_KINDS = ("video", "screen")


def _not_implemented(message: str) -> MediaError:
    return MediaError(501, "not_implemented", message)


class LocalMediaService:
    """MediaService for routers living in this process (see module docstring)."""

    def __init__(self, *, audio_settings: Any = None, check_hooks: bool = True) -> None:
        if check_hooks:
            aiortc_hooks.check_private_api()
        self._listener: MediaListener | None = None
        self._routers: dict[str, Router] = {}
        self._bridges: dict[str, Any] = {}
        self._audio_settings = audio_settings
        self.stats = MediaStats()  # read by the control plane's /metrics collector
        self._recordings: dict[str, Any] = {}
        self.closed = False

    @classmethod
    def from_config(cls, config: Any) -> LocalMediaService:
        """Built by the control plane from its Config ([media] talking settings)."""
        settings = None
        audio = _audio_module()
        if audio is not None and hasattr(audio, "AudioSettings"):
            media = getattr(config, "media", None)
            values = {
                k: getattr(media, k)
                for k in ("talking_level_dbov", "talking_packets", "silence_packets")
                if media is not None and hasattr(media, k)
            }
            try:
                settings = audio.AudioSettings(**values)
            except TypeError:
                settings = audio.AudioSettings()
        return cls(audio_settings=settings)

    # --- listener ---------------------------------------------------------------------------

    def set_listener(self, listener: MediaListener) -> None:
        self._listener = listener

    def _emit(self, event: MediaEvent) -> None:
        if self._listener is not None:
            self._listener(event)

    # --- meetings ---------------------------------------------------------------------------

    def router(self, meeting_id: str) -> Router:
        """The meeting's Router, created on first use (open_meeting is optional)."""
        if self.closed:
            raise MediaError(503, "closed", "the media service is closed")
        router = self._routers.get(meeting_id)
        if router is None or router.closed:
            router = self._routers[meeting_id] = Router(meeting_id, self._emit, self.stats)
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
            raise MediaError(409, "no_offer", "no receive connection was offered to this user")
        return await router.answer_subscriber(user_id, answer_sdp)

    # --- audio ------------------------------------------------------------------------------

    def _bridge(self, meeting_id: str) -> Any:
        bridge = self._bridges.get(meeting_id)
        if bridge is not None:
            return bridge
        audio = _audio_module()
        if audio is None or not hasattr(audio, "AudioBridge"):
            raise _not_implemented("the audio bridge is not available yet")
        self.router(meeting_id)  # the meeting exists for the media plane from now on
        settings = self._audio_settings
        if settings is None and hasattr(audio, "AudioSettings"):
            settings = self._audio_settings = audio.AudioSettings()

        def on_talking(user_id: str, is_talking: bool) -> None:
            self._emit(TalkingChanged(meeting_id, user_id, is_talking))

        bridge = self._bridges[meeting_id] = audio.AudioBridge(
            meeting_id, on_talking, settings, stats=self.stats
        )
        recording = self._recordings.get(meeting_id)
        if recording is not None:
            recording.attach_bridge(bridge)
        return bridge

    async def audio_offer(self, meeting_id: str, user_id: str, offer_sdp: str) -> str:
        return await self._bridge(meeting_id).offer(user_id, offer_sdp)

    async def set_audio_enabled(self, meeting_id: str, user_id: str, enabled: bool) -> None:
        result = self._bridge(meeting_id).set_enabled(user_id, enabled)
        if hasattr(result, "__await__"):
            await result

    # --- recording --------------------------------------------------------------------------

    async def start_recording(self, meeting_id: str, work_path: str) -> None:
        if meeting_id in self._recordings:
            return
        from recorder.meeting import MeetingRecording

        recording = MeetingRecording(self.router(meeting_id), work_path, self.stats)
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

    async def close(self) -> None:
        self.closed = True
        meetings = list(self._routers) + [m for m in self._bridges if m not in self._routers]
        for meeting_id in meetings:
            await self.close_meeting(meeting_id)
        peer.close_ice()  # the process's shared UDP sockets

    def counts(self) -> dict[str, int]:
        """Live objects: meetings, producers, subscribers (receive PCs), consumers."""
        out = {"meetings": len(self._routers), "producers": 0, "subscribers": 0, "consumers": 0}
        for router in self._routers.values():
            for k, v in router.counts().items():
                out[k] += v
        return out


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise MediaError(400, "bad_kind", f"unknown stream type {kind!r}")


def _audio_module() -> Any:
    try:
        return importlib.import_module("sfu.audio")
    except ImportError as exc:
        if exc.name not in ("sfu.audio", "sfu"):
            log.warning("audio bridge cannot be imported: %s", exc)
        return None


__all__ = ["LocalMediaService"]
