"""Recording a meeting: started and stopped by a moderator (or by the meeting's stop), finalised
into a name that is never overwritten, and recovered from its parts after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from recorder.recording import merge_parts, part_files
from sfu.api import MediaError, RecordingResult

from ..auth import Principal
from ..errors import ApiError, bad_request, forbidden, not_found
from ..events import make_event
from ..storage import StoreUnavailable
from ..validation import MAX_NAME_SUFFIX
from .media import media_errors
from .rendering import render_recording
from .state import ActiveRecording, LiveMeeting, MeetingState

log = logging.getLogger("meeting_sfu.domain")


def unique_path(path: Path) -> Path:
    """Reserve `path`, or `name-1.mkv`, `name-2.mkv`... when it is taken: nothing is overwritten.

    The name is taken by creating the file empty with O_EXCL, so two recordings finalised at
    the same moment never get the same one; the merge then replaces the empty file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(MAX_NAME_SUFFIX + 1):
        candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return candidate
    raise ApiError(409, "conflict", "too many recordings with that name")


def _recover_parts(work_path: Path, final: Path) -> RecordingResult | None:
    """Merge the crash-safe parts a recorder left (its process died) into `final`."""
    if not part_files(work_path):
        return None
    size = merge_parts(work_path, final)
    log.info("recording recovered path=%s bytes=%s", final, size)
    return RecordingResult(str(final), size) if size else None


def release_path(path: Path) -> None:
    """Give back a name reserved by `unique_path` that no recording filled."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            path.unlink()


def _recover_into(parts: Path, target_dir: Path, stamp: str) -> tuple[str | None, int | None]:
    """The parts of a recording cut short by a crash, merged under `target_dir` (in a thread)."""
    if not part_files(parts):
        return None, None
    target = unique_path(target_dir / f"{stamp}.mkv")
    size: int | None = None
    try:
        size = merge_parts(parts, target)
    except Exception as exc:  # a broken part must not stop the server from starting
        log.error("recording recovery failed parts=%s error=%s", parts, exc)
    if not size:
        release_path(target)
        return None, None
    log.info("recording recovered path=%s", target)
    return str(target), size


class Recordings(MeetingState):
    async def _recover_recordings(self) -> None:
        """Recordings cut short by a crash: their parts are merged into the fallback path."""
        for rec in await self.store.recordings():
            if rec.status != "STARTED" or not self._recovers(rec.id):
                continue
            path, size = await asyncio.to_thread(
                _recover_into,
                self.work_dir / rec.id,
                self.recordings_dir / f"meeting_{rec.meeting_id}",
                rec.started_at.strftime("%Y%m%dT%H%M%SZ"),
            )
            await self.store.finish_recording(rec.id, self._clock(), path, size)

    def _recovers(self, recording_id: str) -> bool:
        """Whether a recording the store says started is this node's to recover (a single node's
        are all its own)."""
        return True

    async def _recording_target(self, principal: Principal, meeting_id: str) -> None:
        row = await self._meeting(meeting_id)
        live = self._live.get(meeting_id)
        if live is None:
            raise bad_request("meeting is not active", "meeting_not_active")
        if principal.user_id not in live.participants:
            raise not_found("not a participant of the meeting")
        if await self.role(principal, row.room_id) != "owner":
            raise forbidden("only a moderator may record")

    def _still_recordable(self, principal: Principal, meeting_id: str) -> LiveMeeting:
        """Under the lock: the meeting may have stopped, or he left, while we waited (a role
        only grows, and was checked before)."""
        live = self._live.get(meeting_id)
        if live is None:
            raise bad_request("meeting is not active", "meeting_not_active")
        if principal.user_id not in live.participants:
            raise not_found("not a participant of the meeting")
        return live

    async def start_recording(self, principal: Principal, meeting_id: str) -> None:
        await self._recording_target(principal, meeting_id)
        async with self._lock(meeting_id):
            live = self._still_recordable(principal, meeting_id)
            if live.recording is not None:
                return
            rec_id = str(uuid.uuid4())
            self.work_dir.mkdir(parents=True, exist_ok=True)
            work_path = str(self.work_dir / rec_id)
            started = self._clock()
            # Stored first: a recording the store does not know would never be recovered.
            await self.store.insert_recording(rec_id, meeting_id, principal.user_id, started)
            try:
                with media_errors():
                    await self.media.start_recording(meeting_id, work_path)
            except BaseException:
                with contextlib.suppress(StoreUnavailable):
                    await self.store.finish_recording(rec_id, self._clock(), None, None)
                raise
            live.recording = ActiveRecording(rec_id, principal.user_id, started, work_path)
            log.info("recording started meeting=%s recording=%s", meeting_id, rec_id)
            self._to_participants(
                live, make_event("MEETING_RECORDING_STARTED", meetingId=meeting_id, userId=principal.user_id)
            )

    async def stop_recording(self, principal: Principal, meeting_id: str, name: str, folder_id: str) -> None:
        await self._recording_target(principal, meeting_id)
        async with self._lock(meeting_id):
            live = self._still_recordable(principal, meeting_id)
            if live.recording is None:
                return
            await self._finish_recording(
                meeting_id, live, self.recordings_dir / folder_id / f"{name}.mkv", principal.user_id
            )

    async def _finish_recording(
        self, meeting_id: str, live: LiveMeeting, target: Path, stopped_by: str | None, *, must_store: bool = True
    ) -> None:
        """Finalise the running recording into `target` (or a free name beside it). With
        `must_store`, a store that cannot record the result fails the call (after the file is
        made: the recording is not lost); a stop logs it and goes on."""
        rec = live.recording
        assert rec is not None
        final = unique_path(target)
        try:
            if live.media_lost:  # nothing left in the media plane: what reached the disk is kept
                result = await asyncio.to_thread(_recover_parts, Path(rec.work_path), final)
            else:
                result = await self.media.stop_recording(meeting_id, str(final))
        except MediaError as exc:
            log.error("recording finalisation failed meeting=%s error=%s", meeting_id, exc.message)
            result = None
        except Exception:  # a muxer bug must not leave the meeting stuck (nor stop a stop)
            log.exception("recording finalisation failed meeting=%s", meeting_id)
            result = None
        if result is None:
            release_path(final)
        live.recording = None
        log.info("recording stopped meeting=%s path=%s", meeting_id, result.path if result else None)
        if stopped_by is not None:
            self._to_participants(
                live, make_event("MEETING_RECORDING_STOPPED", meetingId=meeting_id, userId=stopped_by)
            )
        try:
            await self.store.finish_recording(
                rec.id, self._clock(), result.path if result else None, result.size_bytes if result else None
            )
        except StoreUnavailable as exc:
            log.error("recording result not stored recording=%s path=%s error=%s", rec.id, result and result.path, exc)
            if must_store:
                raise

    async def recordings(self) -> list[dict[str, Any]]:
        return [render_recording(r) for r in await self.store.recordings()]
