"""What every part of the meeting rules shares: runtime state, per-meeting locks and the checks.

A started meeting lives in memory only (a restart stops every meeting); its durable rows are in
the AsyncStore. Each concept (lifecycle, joins, waiting room, media, recordings) is a mixin over
`MeetingState`; `service.MeetingService` composes them.

Concurrency: every change to one meeting runs under that meeting's lock. The store is awaited,
so anything read before the lock may be stale once it is held: each operation checks again, under
the lock, what it is about to change. While a meeting is live its row exists (a delete stops it
first, under the lock; expiry skips live meetings), so code holding the lock over a live meeting
may use `live.row` without reading the store again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sfu.api import MediaService

from ..auth import Principal
from ..errors import forbidden, not_found
from ..events import EventHub, now_utc
from ..storage import AsyncStore, StoreUnavailable
from ..storage.rows import MeetingRow

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


@dataclass
class ActiveRecording:
    id: str
    starter_id: str
    started_at: datetime
    work_path: str


@dataclass
class LiveMeeting:
    """Runtime state of a started meeting (never stored: a restart stops every meeting)."""

    row: MeetingRow  # its stored row, read when it started (a meeting's row never changes)
    started_at: datetime
    participants: dict[str, Participant] = field(default_factory=dict)
    recording: ActiveRecording | None = None
    media_lost: bool = False  # its media worker died: the media plane holds nothing of it
    # Display names of the users in the waiting queue (which a stop clears), by user id.
    waiting_names: dict[str, str] = field(default_factory=dict)


class MeetingState:
    """The store, the event hub, the media plane, and the live meetings of this node."""

    store: AsyncStore  # set by open(): opening a store is async, building the app is not

    def __init__(
        self,
        hub: EventHub,
        media: MediaService,
        *,
        recordings_dir: Path,
        work_dir: Path,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.hub = hub
        self.media = media
        self.recordings_dir = recordings_dir
        self.work_dir = work_dir
        self._clock = clock
        self._live: dict[str, LiveMeeting] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- locks and lookups -----------------------------------------------------------------

    def _lock(self, meeting_id: str) -> asyncio.Lock:
        lock = self._locks.get(meeting_id)
        if lock is None:
            lock = self._locks[meeting_id] = asyncio.Lock()
        return lock

    async def _meeting(self, meeting_id: str) -> MeetingRow:
        row = await self.store.get_meeting(meeting_id)
        if row is None:
            raise not_found("meeting not found")
        return row

    async def role(self, principal: Principal, room_id: str) -> str | None:
        """'owner', 'member' or None: the token's grant and the stored membership, the higher."""
        granted = principal.grants.get(room_id)
        if granted == "owner":
            return "owner"  # no stored role can add to it: no need to ask the store
        stored = await self.store.member_role(room_id, principal.user_id)
        if "owner" in (granted, stored):
            return "owner"
        return granted or stored

    async def _member(self, principal: Principal, room_id: str) -> str:
        role = await self.role(principal, room_id)
        if role is None:
            raise forbidden("not a member of the meeting's room")
        return role

    def _participant(self, meeting_id: str, user_id: str) -> tuple[LiveMeeting, Participant]:
        live = self._live.get(meeting_id)
        participant = live.participants.get(user_id) if live else None
        if live is None or participant is None:
            raise not_found("not a participant of the meeting")
        return live, participant

    # --- events ----------------------------------------------------------------------------

    def _to_participants(self, live: LiveMeeting, event: dict[str, Any]) -> None:
        self.hub.to_users(live.participants.keys(), event)

    async def _stored_members(self, room_id: str) -> dict[str, str]:
        """The room's stored memberships, for an event's audience. An event follows a change
        already made: when the store cannot say, the sockets' own grants decide alone."""
        try:
            return await self.store.members_of_room(room_id)
        except StoreUnavailable as exc:
            log.warning("room members unknown, event sent by token grants only room=%s error=%s", room_id, exc)
            return {}

    async def _to_room(
        self, room_id: str, event: dict[str, Any], also: Iterable[str] = (), stored: dict[str, str] | None = None
    ) -> None:
        """To the room's members; `stored`: its memberships when the caller has read them already."""
        if stored is None:
            stored = await self._stored_members(room_id)
        self.hub.to_room_members(room_id, event, stored, also=also)

    async def _to_owners(self, room_id: str, event: dict[str, Any], also_queue: str | None = None) -> None:
        self.hub.to_room_owners(room_id, event, await self._stored_members(room_id), also_queue=also_queue)

    # --- what one concept asks of another (defined by the mixins) --------------------------

    async def _stop(self, row: MeetingRow, live: LiveMeeting, delete_after: bool = True) -> None:
        raise NotImplementedError  # lifecycle.Lifecycle

    async def _remove_participant(
        self, row: MeetingRow, live: LiveMeeting, uid: str, auto_stop: bool = True, stored: dict[str, str] | None = None
    ) -> None:
        raise NotImplementedError  # joins.Joins

    async def _finish_recording(
        self, meeting_id: str, live: LiveMeeting, target: Path, stopped_by: str | None, *, must_store: bool = True
    ) -> None:
        raise NotImplementedError  # recordings.Recordings

    async def _enter_waiting_room(
        self, row: MeetingRow, live: LiveMeeting, principal: Principal, queue_id: str
    ) -> str:
        raise NotImplementedError  # waiting_room.WaitingRoom

    async def _add_participant(
        self, row: MeetingRow, live: LiveMeeting, uid: str, queue_id: str, role: str | None, name: str | None
    ) -> None:
        raise NotImplementedError  # joins.Joins
