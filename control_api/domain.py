"""Meeting lifecycle and rules: who may do what, the waiting room, clashes, auto-stop, expiry.

Plain classes, no HTTP: the handlers parse a request, call one method here and render the
result. Every method checks existence, rights and state before it changes anything (DESIGN
section 8), then commits durable changes to the store, asks the media plane, and sends events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from recorder.recording import merge_parts, part_files
from sfu import api
from sfu.api import (
    MediaError,
    MediaEvent,
    MediaService,
    MeetingLost,
    PeerClosed,
    ProducerStateChanged,
    RecordingResult,
    StreamRef,
    SubscriberOffer,
    TalkingChanged,
)

from .auth import Principal
from .errors import ApiError, bad_request, conflict, forbidden, not_found
from .events import EventHub, iso, make_event, now_utc
from .store import MeetingRow, Store
from .validation import MAX_NAME_SUFFIX

log = logging.getLogger("meeting_sfu.domain")

PERMANENT = "permanent"
SCHEDULED = "scheduled"
ACCEPTED = "ACCEPTED"
WAITING = "WAITING"
REJECTED = "REJECTED"


@dataclass
class Participant:
    user_id: str
    queue_id: str
    user_type: str  # "moderator" | "registered"
    joined_at: datetime
    audio: bool = False
    video: bool = False
    screen: bool = False
    name: str | None = None  # the `name` claim of the token he joined with

    def render(self) -> dict[str, Any]:
        body = {
            "userId": self.user_id,
            "userType": self.user_type,
            "queueId": self.queue_id,
            "audioStreamEnabled": self.audio,
            "videoStreamEnabled": self.video,
            "screenStreamEnabled": self.screen,
            "joinedAt": iso(self.joined_at),
        }
        if self.name is not None:
            body["name"] = self.name  # an extension Carbonio clients ignore (DESIGN section 4)
        return body


@dataclass
class ActiveRecording:
    id: str
    starter_id: str
    started_at: datetime
    work_path: str


@dataclass
class LiveMeeting:
    """Runtime state of a started meeting (never stored: a restart stops every meeting)."""

    started_at: datetime
    participants: dict[str, Participant] = field(default_factory=dict)
    recording: ActiveRecording | None = None
    media_lost: bool = False  # its media worker died: the media plane holds nothing of it
    # Display names of the users in the waiting queue (which a stop clears), by user id.
    waiting_names: dict[str, str] = field(default_factory=dict)


# The HTTP status of each media error code (sfu knows no HTTP; DESIGN §9.1).
MEDIA_STATUS = {
    api.BAD_SDP: 400,
    api.BAD_KIND: 400,
    api.UNSUPPORTED_CODEC: 400,
    api.NO_OFFER: 409,
    api.CLOSED: 409,
    api.GONE: 409,
    api.UNAVAILABLE: 503,
    api.WORKER_LOST: 503,
    api.TIMEOUT: 503,
    api.INTERNAL: 500,
}


def media_status(exc: MediaError) -> int:
    return MEDIA_STATUS.get(exc.code, 503)


@contextlib.contextmanager
def media_errors() -> Iterator[None]:
    """A media-plane refusal becomes the API error with the status its code maps to."""
    try:
        yield
    except MediaError as exc:
        status = media_status(exc)
        code = "internal_error" if status == 500 else ("media_unavailable" if status == 503 else exc.code)
        raise ApiError(status, code, exc.message) from None


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


class MeetingService:
    """The 18 operations' rules, over the store, the event hub and the media plane."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        media: MediaService,
        *,
        recordings_dir: Path,
        work_dir: Path,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.store = store
        self.hub = hub
        self.media = media
        self.recordings_dir = recordings_dir
        self.work_dir = work_dir
        self._clock = clock
        self._live: dict[str, LiveMeeting] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # A restart stops every meeting: no waiting queue and no running recording survive it.
        store.clear_waiting()
        self._recover_recordings()

    def _recover_recordings(self) -> None:
        """Recordings cut short by a crash: their parts are merged into the fallback path."""
        for rec in self.store.recordings():
            if rec.status != "STARTED":
                continue
            parts = self.work_dir / rec.id
            path: str | None = None
            size: int | None = None
            if part_files(parts):
                stamp = rec.started_at.strftime("%Y%m%dT%H%M%SZ")
                target = unique_path(self.recordings_dir / f"meeting_{rec.meeting_id}" / f"{stamp}.mkv")
                try:
                    size = merge_parts(parts, target)
                    path = str(target)
                    log.info("recording recovered recording=%s path=%s", rec.id, path)
                except Exception as exc:  # a broken part must not stop the server from starting
                    log.error("recording recovery failed recording=%s error=%s", rec.id, exc)
                if not size:
                    release_path(target)
                    path = None
            self.store.finish_recording(rec.id, self._clock(), path, size)

    # --- helpers ---------------------------------------------------------------------------

    def _lock(self, meeting_id: str) -> asyncio.Lock:
        lock = self._locks.get(meeting_id)
        if lock is None:
            lock = self._locks[meeting_id] = asyncio.Lock()
        return lock

    def _meeting(self, meeting_id: str) -> MeetingRow:
        row = self.store.get_meeting(meeting_id)
        if row is None:
            raise not_found("meeting not found")
        return row

    def role(self, principal: Principal, room_id: str) -> str | None:
        """'owner', 'member' or None: the token's grant and the stored membership, the higher."""
        granted = principal.grants.get(room_id)
        stored = self.store.member_role(room_id, principal.user_id)
        if "owner" in (granted, stored):
            return "owner"
        return granted or stored

    def _member(self, principal: Principal, room_id: str) -> str:
        role = self.role(principal, room_id)
        if role is None:
            raise forbidden("not a member of the meeting's room")
        return role

    def _participant(self, meeting_id: str, user_id: str) -> tuple[LiveMeeting, Participant]:
        live = self._live.get(meeting_id)
        participant = live.participants.get(user_id) if live else None
        if live is None or participant is None:
            raise not_found("not a participant of the meeting")
        return live, participant

    def _to_participants(self, live: LiveMeeting, event: dict[str, Any]) -> None:
        self.hub.to_users(live.participants.keys(), event)

    def render(self, row: MeetingRow) -> dict[str, Any]:
        live = self._live.get(row.id)
        body: dict[str, Any] = {
            "id": row.id,
            "name": row.name,
            "roomId": row.room_id,
            "active": live is not None,
            "participants": [p.render() for p in live.participants.values()] if live else [],
            "createdAt": iso(row.created_at),
            "meetingType": row.meeting_type,
        }
        if live:
            body["startedAt"] = iso(live.started_at)
            if live.recording:
                body["recStartedAt"] = iso(live.recording.started_at)
                body["recUserId"] = live.recording.starter_id
        return body

    # --- counts for metrics ----------------------------------------------------------------

    @property
    def active_meetings(self) -> int:
        return len(self._live)

    @property
    def participant_count(self) -> int:
        return sum(len(live.participants) for live in self._live.values())

    # --- meetings --------------------------------------------------------------------------

    def public_meeting(self, meeting_id: str) -> dict[str, Any]:
        row = self.store.get_meeting(meeting_id)
        if row is None or row.meeting_type != SCHEDULED:
            raise not_found("meeting not found")
        return {"name": row.name}

    def list_meetings(self, principal: Principal) -> list[dict[str, Any]]:
        rooms = set(principal.grants) | set(self.store.rooms_of_user(principal.user_id))
        return [self.render(row) for row in self.store.meetings_of_rooms(sorted(rooms))]

    def get_meeting(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        row = self._meeting(meeting_id)
        self._member(principal, row.room_id)
        return self.render(row)

    def create_meeting(
        self,
        principal: Principal,
        name: str,
        meeting_type: str,
        room_id: str | None,
        expiration: datetime | None,
    ) -> dict[str, Any]:
        now = self._clock()
        # Whatever the type (a permanent meeting never expires, but a past date is a mistake);
        # it depends on the body alone, so it comes before rights (DESIGN section 8).
        if expiration is not None and expiration <= now:
            raise bad_request("expiration is in the past")
        if room_id is not None:
            self._member(principal, room_id)
            if self.store.meeting_of_room(room_id) is not None:
                raise conflict("the room already has a meeting")
        new_room = room_id is None
        if new_room:
            room_id = str(uuid.uuid4())
        row = MeetingRow(
            id=str(uuid.uuid4()),
            room_id=room_id,  # type: ignore[arg-type]
            name=name,
            meeting_type=meeting_type,
            expiration=expiration,
            created_at=now,
        )
        self.store.insert_meeting(row)
        if new_room:
            self.store.add_member(row.room_id, principal.user_id, "owner")
        log.info("meeting created meeting=%s room=%s type=%s", row.id, row.room_id, meeting_type)
        self.hub.to_room_members(
            row.room_id, make_event("MEETING_CREATED", meetingId=row.id, roomId=row.room_id)
        )
        return self.render(row)

    async def delete_meeting(self, principal: Principal, meeting_id: str) -> None:
        row = self._meeting(meeting_id)
        self._member(principal, row.room_id)
        async with self._lock(meeting_id):
            if self.store.get_meeting(meeting_id) is None:
                return
            live = self._live.get(meeting_id)
            if live is not None:
                await self._stop(row, live, delete_after=False)
            self._delete(row)

    def _delete(self, row: MeetingRow) -> None:
        self.store.delete_meeting(row.id)
        self._locks.pop(row.id, None)
        log.info("meeting deleted meeting=%s", row.id)
        self.hub.to_room_members(row.room_id, make_event("MEETING_DELETED", meetingId=row.id))

    async def start_meeting(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        row = self._meeting(meeting_id)
        self._member(principal, row.room_id)
        async with self._lock(meeting_id):
            live = self._live.get(meeting_id)
            if live is None:
                with media_errors():
                    await self.media.open_meeting(meeting_id)
                live = self._live[meeting_id] = LiveMeeting(started_at=self._clock())
                log.info("meeting started meeting=%s by=%s", meeting_id, principal.user_id)
            # Sent also when it was running already, as Carbonio does: clients re-sync on it.
            self.hub.to_room_members(
                row.room_id,
                make_event(
                    "MEETING_STARTED",
                    meetingId=meeting_id,
                    starterUser=principal.user_id,
                    startedAt=iso(live.started_at),
                ),
            )
            return self.render(row)

    async def stop_meeting(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        row = self._meeting(meeting_id)
        self._member(principal, row.room_id)
        async with self._lock(meeting_id):
            live = self._live.get(meeting_id)
            if live is not None:
                await self._stop(row, live)
            if self.store.get_meeting(meeting_id) is None:
                # A scheduled meeting past its expiration is deleted when it stops.
                return {**self.render(row), "active": False, "participants": []}
            return self.render(row)

    async def _stop(self, row: MeetingRow, live: LiveMeeting, delete_after: bool = True) -> None:
        """Stop effects: recording finalised, LEFT per participant, media closed, queue
        cleared, STOPPED last (to room members and the users still waiting)."""
        if live.recording is not None:
            stamp = self._clock().strftime("%Y%m%dT%H%M%SZ")
            await self._finish_recording(
                row.id, live, self.recordings_dir / f"meeting_{row.id}" / f"{stamp}.mkv", None
            )
        for user_id in list(live.participants):
            await self._remove_participant(row, live, user_id, auto_stop=False)
        try:
            await self.media.close_meeting(row.id)
        except MediaError as exc:  # the meeting stops whatever the media plane says
            log.warning("media close failed meeting=%s error=%s", row.id, exc.message)
        waiting = [w.user_id for w in self.store.waiting_of_meeting(row.id)]
        self.store.clear_waiting(row.id)
        self._live.pop(row.id, None)
        log.info("meeting stopped meeting=%s", row.id)
        self.hub.to_room_members(
            row.room_id, make_event("MEETING_STOPPED", meetingId=row.id), also=waiting
        )
        if delete_after and row.meeting_type == SCHEDULED and row.expiration is not None:
            if row.expiration <= self._clock():
                self._delete(row)

    async def expire(self) -> int:
        """Delete inactive scheduled meetings whose expiration has passed; returns how many."""
        count = 0
        for row in self.store.expired_meetings(self._clock()):
            if row.id in self._live:
                continue  # deleted when it stops
            async with self._lock(row.id):
                if row.id in self._live or self.store.get_meeting(row.id) is None:
                    continue
                self._delete(row)
                count += 1
        return count

    # --- participants ----------------------------------------------------------------------

    async def join(self, principal: Principal, meeting_id: str, queue_id: str) -> str:
        row = self._meeting(meeting_id)
        role = self.role(principal, row.room_id)
        if row.meeting_type == PERMANENT and role is None:
            raise forbidden("not a member of the meeting's room")
        session = self.hub.session(queue_id)
        if session is None or session.user_id != principal.user_id:
            raise bad_request("queue-id is not an open events socket of this user", "bad_queue_id")
        uid = principal.user_id
        async with self._lock(meeting_id):
            live = self._live.get(meeting_id)
            if live is None:
                raise bad_request("meeting is not started", "meeting_not_started")
            existing = live.participants.get(uid)
            if existing is not None:
                if existing.queue_id == queue_id:
                    raise conflict("already a participant from this queue")
                await self._clash(row, live, existing, queue_id, principal.name)
                return ACCEPTED
            if row.meeting_type == PERMANENT or role == "owner":
                self._add_participant(row, live, uid, queue_id, role, principal.name)
                return ACCEPTED
            entry = self.store.waiting_entry(meeting_id, uid)
            if entry is not None and entry.status == ACCEPTED:
                self.store.delete_waiting(meeting_id, uid)
                live.waiting_names.pop(uid, None)
                self._add_participant(
                    row, live, uid, queue_id, self.role(principal, row.room_id), principal.name
                )
                return ACCEPTED
            self._set_waiting_name(live, uid, principal.name)
            if entry is not None:
                if entry.queue_id != queue_id:
                    self.store.put_waiting(meeting_id, uid, queue_id, WAITING)
                    self.hub.to_queue(
                        entry.queue_id,
                        make_event("MEETING_WAITING_PARTICIPANT_CLASHED", meetingId=meeting_id),
                    )
                return WAITING
            self.store.put_waiting(meeting_id, uid, queue_id, WAITING)
            log.info("user waiting meeting=%s user=%s", meeting_id, uid)
            self.hub.to_room_owners(
                row.room_id,
                make_event(
                    "MEETING_WAITING_PARTICIPANT_JOINED", meetingId=meeting_id, userId=uid, name=principal.name
                ),
            )
            return WAITING

    @staticmethod
    def _set_waiting_name(live: LiveMeeting, uid: str, name: str | None) -> None:
        if name is None:
            live.waiting_names.pop(uid, None)
        else:
            live.waiting_names[uid] = name

    def _add_participant(
        self, row: MeetingRow, live: LiveMeeting, uid: str, queue_id: str, role: str | None, name: str | None
    ) -> None:
        live.participants[uid] = Participant(
            user_id=uid,
            queue_id=queue_id,
            user_type="moderator" if role == "owner" else "registered",
            joined_at=self._clock(),
            name=name,
        )
        log.info("participant joined meeting=%s user=%s", row.id, uid)
        self.hub.to_room_members(
            row.room_id, make_event("MEETING_PARTICIPANT_JOINED", meetingId=row.id, userId=uid, name=name)
        )

    async def _clash(
        self, row: MeetingRow, live: LiveMeeting, existing: Participant, queue_id: str, name: str | None
    ) -> None:
        """The same user joins from another socket: the old one is kicked out."""
        uid = existing.user_id
        self.hub.to_queue(
            existing.queue_id, make_event("MEETING_PARTICIPANT_CLASHED", meetingId=row.id)
        )
        await self._close_media(row, live, existing)
        self.hub.to_room_members(
            row.room_id, make_event("MEETING_PARTICIPANT_LEFT", meetingId=row.id, userId=uid)
        )
        existing.queue_id = queue_id
        existing.audio = existing.video = existing.screen = False
        existing.joined_at = self._clock()
        existing.name = name
        log.info("participant clashed meeting=%s user=%s", row.id, uid)
        self.hub.to_room_members(
            row.room_id, make_event("MEETING_PARTICIPANT_JOINED", meetingId=row.id, userId=uid, name=name)
        )

    async def _close_media(self, row: MeetingRow, live: LiveMeeting, p: Participant) -> None:
        """Close a participant's PCs; the streams he published end for everyone."""
        try:
            await self.media.remove_participant(row.id, p.user_id)
        except MediaError as exc:
            log.warning("media remove failed meeting=%s error=%s", row.id, exc.message)
        for kind in ("video", "screen"):
            if getattr(p, kind):
                setattr(p, kind, False)
                self._to_participants(
                    live,
                    make_event(
                        "MEETING_MEDIA_STREAM_CHANGED",
                        meetingId=row.id,
                        userId=p.user_id,
                        mediaType=kind.upper(),
                        active=False,
                    ),
                )

    async def leave(self, principal: Principal, meeting_id: str) -> None:
        row = self._meeting(meeting_id)
        self._member(principal, row.room_id)
        async with self._lock(meeting_id):
            live = self._live.get(meeting_id)
            if live is None or principal.user_id not in live.participants:
                return
            await self._remove_participant(row, live, principal.user_id)

    async def _remove_participant(
        self, row: MeetingRow, live: LiveMeeting, uid: str, auto_stop: bool = True
    ) -> None:
        p = live.participants.get(uid)
        if p is None:
            return
        await self._close_media(row, live, p)
        del live.participants[uid]
        log.info("participant left meeting=%s user=%s", row.id, uid)
        self.hub.to_room_members(
            row.room_id, make_event("MEETING_PARTICIPANT_LEFT", meetingId=row.id, userId=uid)
        )
        if auto_stop and not live.participants:
            await self._stop(row, live)

    async def socket_closed(self, queue_id: str) -> None:
        """Closing an events socket leaves every meeting joined from it."""
        for meeting_id, live in list(self._live.items()):
            for p in list(live.participants.values()):
                if p.queue_id != queue_id:
                    continue
                row = self.store.get_meeting(meeting_id)
                if row is None:
                    continue
                async with self._lock(meeting_id):
                    current = self._live.get(meeting_id)
                    if current is not None and current.participants.get(p.user_id) is p:
                        await self._remove_participant(row, current, p.user_id)

    # --- waiting room ----------------------------------------------------------------------

    def get_queue(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        row = self._meeting(meeting_id)
        if self._member(principal, row.room_id) != "owner":
            raise forbidden("only a moderator may see the waiting queue")
        users = [w.user_id for w in self.store.waiting_of_meeting(meeting_id, WAITING)]
        body: dict[str, Any] = {"users": users}
        # Display names, an extension beside the seed's list of ids (which Carbonio clients
        # read as plain strings): present only when some waiting user has one.
        live = self._live.get(meeting_id)
        names = {u: live.waiting_names[u] for u in users if u in live.waiting_names} if live else {}
        if names:
            body["names"] = names
        return body

    async def update_queued_user(
        self, principal: Principal, meeting_id: str, user_id: str, status: str
    ) -> None:
        row = self._meeting(meeting_id)
        async with self._lock(meeting_id):
            entry = self.store.waiting_entry(meeting_id, user_id)
            if entry is None or entry.status != WAITING:
                raise not_found("user is not waiting in this meeting's queue")
            is_owner = self.role(principal, row.room_id) == "owner"
            if status == ACCEPTED and not is_owner:
                raise forbidden("only a moderator may accept a waiting user")
            if status == REJECTED and not (is_owner or principal.user_id == user_id):
                raise forbidden("only a moderator or the user himself may reject")
            if status == ACCEPTED:
                self.store.put_waiting(meeting_id, user_id, entry.queue_id, ACCEPTED)
                self.store.add_member(row.room_id, user_id, "member")
                type_ = "MEETING_WAITING_PARTICIPANT_ACCEPTED"
            else:
                self.store.delete_waiting(meeting_id, user_id)
                live = self._live.get(meeting_id)
                if live is not None:
                    live.waiting_names.pop(user_id, None)
                type_ = "MEETING_WAITING_PARTICIPANT_REJECTED"
            log.info("waiting user %s meeting=%s user=%s", status.lower(), meeting_id, user_id)
            self.hub.to_room_owners(
                row.room_id,
                make_event(type_, meetingId=meeting_id, userId=user_id),
                also_queue=entry.queue_id,
            )

    # --- media -----------------------------------------------------------------------------

    def _media_target(self, principal: Principal, meeting_id: str) -> tuple[MeetingRow, LiveMeeting, Participant]:
        row = self._meeting(meeting_id)
        self._member(principal, row.room_id)
        live, p = self._participant(meeting_id, principal.user_id)
        return row, live, p

    async def update_media(
        self, principal: Principal, meeting_id: str, kind: str, enabled: bool, sdp: str | None
    ) -> None:
        if enabled and sdp is None:  # syntax before existence (DESIGN section 8)
            raise bad_request("sdp is required to enable a stream")
        row, live, p = self._media_target(principal, meeting_id)
        async with self._lock(meeting_id):
            row, live, p = self._media_target(principal, meeting_id)
            if enabled:
                with media_errors():
                    answer = await self.media.publish(meeting_id, p.user_id, kind, sdp)  # type: ignore[arg-type]
                setattr(p, kind, True)
                self.hub.to_users(
                    [p.user_id],
                    make_event(
                        "MEETING_SDP_ANSWERED",
                        meetingId=meeting_id,
                        userId=p.user_id,
                        mediaType=kind.upper(),
                        sdp=answer,
                    ),
                )
                return
            if not getattr(p, kind):
                return
            setattr(p, kind, False)
            self._to_participants(
                live,
                make_event(
                    "MEETING_MEDIA_STREAM_CHANGED",
                    meetingId=meeting_id,
                    userId=p.user_id,
                    mediaType=kind.upper(),
                    active=False,
                ),
            )
            try:
                await self.media.unpublish(meeting_id, p.user_id, kind)  # type: ignore[arg-type]
            except MediaError as exc:
                log.warning("unpublish failed meeting=%s error=%s", meeting_id, exc.message)

    async def update_subscriptions(
        self,
        principal: Principal,
        meeting_id: str,
        subscribe: list[tuple[str, str]],
        unsubscribe: list[tuple[str, str]],
        qualities: dict[tuple[str, str], str] | None = None,
    ) -> None:
        """`qualities` caps the simulcast layer of subscribed streams (DESIGN §6.1)."""
        qualities = qualities or {}
        # Syntax before existence (DESIGN section 8).
        if not subscribe and not unsubscribe:
            raise bad_request("subscribe and unsubscribe are both empty")
        if any(uid == principal.user_id for uid, _ in subscribe):
            raise bad_request("a user cannot subscribe to his own streams")
        row, live, p = self._media_target(principal, meeting_id)
        async with self._lock(meeting_id):
            row, live, p = self._media_target(principal, meeting_id)
            # Streams of users who are not (or no longer) participants are skipped: the client
            # may race a leave. The media plane skips streams that are not published likewise.
            subs = [
                StreamRef(u, k, qualities.get((u, k)))  # type: ignore[arg-type]
                for u, k in subscribe
                if u in live.participants
            ]
            unsubs = [StreamRef(u, k) for u, k in unsubscribe]  # type: ignore[arg-type]
            with media_errors():
                offer = await self.media.update_subscriptions(meeting_id, p.user_id, subs, unsubs)
            if offer is not None:
                self.hub.to_users(
                    [p.user_id],
                    make_event(
                        "MEETING_SDP_OFFERED",
                        meetingId=meeting_id,
                        userId=p.user_id,
                        mediaType="VIDEO",
                        sdp=offer,
                    ),
                )

    async def answer_media(self, principal: Principal, meeting_id: str, sdp: str) -> None:
        self._media_target(principal, meeting_id)
        async with self._lock(meeting_id):
            row, live, p = self._media_target(principal, meeting_id)
            with media_errors():
                streams = await self.media.answer_subscriber(meeting_id, p.user_id, sdp)
            self.hub.to_users(
                [p.user_id],
                make_event(
                    "MEETING_PARTICIPANT_SUBSCRIBED",
                    meetingId=meeting_id,
                    userId=p.user_id,
                    streams=[{"type": s.kind, "userId": s.user_id, "mid": s.mid} for s in streams],
                ),
            )

    async def audio_offer(self, principal: Principal, meeting_id: str, sdp: str) -> None:
        self._media_target(principal, meeting_id)
        async with self._lock(meeting_id):
            row, live, p = self._media_target(principal, meeting_id)
            with media_errors():
                answer = await self.media.audio_offer(meeting_id, p.user_id, sdp)
            self.hub.to_users(
                [p.user_id],
                make_event("MEETING_AUDIO_ANSWERED", meetingId=meeting_id, userId=p.user_id, sdp=answer),
            )

    async def update_audio(
        self, principal: Principal, meeting_id: str, enabled: bool, user_to_moderate: str | None
    ) -> None:
        row = self._meeting(meeting_id)
        role = self._member(principal, row.room_id)
        target = user_to_moderate or principal.user_id
        live, p = self._participant(meeting_id, target)
        moderated = target != principal.user_id
        if moderated:
            if role != "owner":
                raise forbidden("only a moderator may mute another participant")
            if enabled:
                raise bad_request("a moderator may mute, not unmute, another participant")
        async with self._lock(meeting_id):
            live, p = self._participant(meeting_id, target)
            if p.audio == enabled:
                return
            with media_errors():
                await self.media.set_audio_enabled(meeting_id, target, enabled)
            p.audio = enabled
            self._to_participants(
                live,
                make_event(
                    "MEETING_AUDIO_STREAM_CHANGED",
                    meetingId=meeting_id,
                    userId=target,
                    moderatorId=principal.user_id if moderated else None,
                    active=enabled,
                ),
            )

    async def run_media_events(self) -> None:
        """Read the media plane's events until cancelled (a task of the app)."""
        while True:
            try:
                async for event in self.media.events():
                    self.on_media_event(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # a defect must not end the reading for good
                log.exception("reading media events failed")
            await asyncio.sleep(0.1)

    def on_media_event(self, event: MediaEvent) -> None:
        """Media-plane events, turned into websocket events (never raises)."""
        try:
            if isinstance(event, MeetingLost):
                task = asyncio.ensure_future(self._meeting_lost(event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            self._on_media_event(event)
        except Exception:  # a bad event must not stop the events loop
            log.exception("media event failed event=%r", event)

    async def _meeting_lost(self, event: MeetingLost) -> None:
        """The worker holding the meeting died: the meeting stops as by a stop (DESIGN §9.1)."""
        try:
            row = self.store.get_meeting(event.meeting_id)
            if row is None:
                return
            async with self._lock(event.meeting_id):
                live = self._live.get(event.meeting_id)
                if live is None:
                    return
                live.media_lost = True
                log.error("meeting lost its media meeting=%s reason=%s", event.meeting_id, event.reason)
                await self._stop(row, live)
        except Exception:
            log.exception("stopping a meeting that lost its media failed meeting=%s", event.meeting_id)

    def _on_media_event(self, event: MediaEvent) -> None:
        live = self._live.get(event.meeting_id)
        if live is None or isinstance(event, MeetingLost):
            return
        p = live.participants.get(event.user_id)
        if isinstance(event, ProducerStateChanged):
            if p is None:
                return
            if event.active:
                if not getattr(p, event.kind):
                    return  # a late packet of a stream already disabled
            elif not getattr(p, event.kind):
                return  # already announced by the control plane
            setattr(p, event.kind, event.active)
            self._to_participants(
                live,
                make_event(
                    "MEETING_MEDIA_STREAM_CHANGED",
                    meetingId=event.meeting_id,
                    userId=event.user_id,
                    mediaType=event.kind.upper(),
                    active=event.active,
                ),
            )
        elif isinstance(event, SubscriberOffer):
            if p is None:
                return
            self.hub.to_users(
                [event.user_id],
                make_event(
                    "MEETING_SDP_OFFERED",
                    meetingId=event.meeting_id,
                    userId=event.user_id,
                    mediaType="VIDEO",
                    sdp=event.sdp,
                ),
            )
        elif isinstance(event, TalkingChanged):
            if p is None:
                return
            self._to_participants(
                live,
                make_event(
                    "MEETING_PARTICIPANT_TALKING",
                    meetingId=event.meeting_id,
                    userId=event.user_id,
                    isTalking=event.is_talking,
                ),
            )
        elif isinstance(event, PeerClosed):
            log.info("peer closed meeting=%s user=%s peer=%s", event.meeting_id, event.user_id, event.peer)

    # --- recording -------------------------------------------------------------------------

    def _recording_target(self, principal: Principal, meeting_id: str) -> tuple[MeetingRow, LiveMeeting]:
        row = self._meeting(meeting_id)
        live = self._live.get(meeting_id)
        if live is None:
            raise bad_request("meeting is not active", "meeting_not_active")
        if principal.user_id not in live.participants:
            raise not_found("not a participant of the meeting")
        if self.role(principal, row.room_id) != "owner":
            raise forbidden("only a moderator may record")
        return row, live

    async def start_recording(self, principal: Principal, meeting_id: str) -> None:
        self._recording_target(principal, meeting_id)
        async with self._lock(meeting_id):
            row, live = self._recording_target(principal, meeting_id)
            if live.recording is not None:
                return
            rec_id = str(uuid.uuid4())
            self.work_dir.mkdir(parents=True, exist_ok=True)
            work_path = str(self.work_dir / rec_id)
            with media_errors():
                await self.media.start_recording(meeting_id, work_path)
            started = self._clock()
            self.store.insert_recording(rec_id, meeting_id, principal.user_id, started)
            live.recording = ActiveRecording(rec_id, principal.user_id, started, work_path)
            log.info("recording started meeting=%s recording=%s", meeting_id, rec_id)
            self._to_participants(
                live, make_event("MEETING_RECORDING_STARTED", meetingId=meeting_id, userId=principal.user_id)
            )

    async def stop_recording(
        self, principal: Principal, meeting_id: str, name: str, folder_id: str
    ) -> None:
        self._recording_target(principal, meeting_id)
        async with self._lock(meeting_id):
            row, live = self._recording_target(principal, meeting_id)
            if live.recording is None:
                return
            await self._finish_recording(
                meeting_id, live, self.recordings_dir / folder_id / f"{name}.mkv", principal.user_id
            )

    async def _finish_recording(
        self, meeting_id: str, live: LiveMeeting, target: Path, stopped_by: str | None
    ) -> None:
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
        self.store.finish_recording(
            rec.id,
            self._clock(),
            result.path if result else None,
            result.size_bytes if result else None,
        )
        log.info("recording stopped meeting=%s path=%s", meeting_id, result.path if result else None)
        if stopped_by is not None:
            self._to_participants(
                live, make_event("MEETING_RECORDING_STOPPED", meetingId=meeting_id, userId=stopped_by)
            )

    def recordings(self) -> list[dict[str, Any]]:
        return [
            {
                "id": r.id,
                "meetingId": r.meeting_id,
                "starterId": r.starter_id,
                "startedAt": iso(r.started_at),
                "stoppedAt": iso(r.stopped_at) if r.stopped_at else None,
                "path": r.path,
                "sizeBytes": r.size_bytes,
                "status": r.status,
            }
            for r in self.store.recordings()
        ]
