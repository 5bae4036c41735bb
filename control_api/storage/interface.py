"""What the domain asks of durable state, as one async interface both backends implement.

Every method is one short transaction, committed before it returns. A backend that cannot reach
its database raises StoreUnavailable (the API answers 503); a row whose key is taken already
raises StoreConflict.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from .rows import MeetingRow, RecordingRow, WaitingRow


class StoreUnavailable(Exception):
    """The database cannot be reached or did not answer in time; try again later."""


class StoreConflict(Exception):
    """A row with this key exists already: another request, or another node, was first."""


class AsyncStore(Protocol):
    """Rooms, memberships, meetings, the waiting queue and recordings."""

    async def close(self) -> None: ...

    # rooms and memberships
    async def create_room(self, room_id: str, created_at: datetime) -> None: ...
    async def add_member(self, room_id: str, user_id: str, role: str) -> None:
        """Stores a membership (creating the room if needed); an existing one keeps the higher role."""
    async def member_role(self, room_id: str, user_id: str) -> str | None: ...
    async def rooms_of_user(self, user_id: str) -> dict[str, str]:
        """room id -> role."""
    async def members_of_room(self, room_id: str) -> dict[str, str]:
        """user id -> role."""

    # meetings
    async def insert_meeting(self, row: MeetingRow, owner: str | None = None) -> None:
        """Creates the room if needed, and makes `owner` (if given) its owner, in the same
        transaction; StoreConflict when the id or the room has a meeting already."""
    async def delete_meeting(self, meeting_id: str) -> None:
        """Its waiting queue goes with it."""
    async def get_meeting(self, meeting_id: str) -> MeetingRow | None: ...
    async def meeting_of_room(self, room_id: str) -> MeetingRow | None: ...
    async def meetings_of_rooms(self, room_ids: list[str]) -> list[MeetingRow]:
        """Oldest first (created_at, then id)."""
    async def expired_meetings(self, now: datetime) -> list[MeetingRow]:
        """Scheduled meetings whose expiration is at or before `now`."""

    # waiting queue
    async def waiting_entry(self, meeting_id: str, user_id: str) -> WaitingRow | None: ...
    async def put_waiting(self, meeting_id: str, user_id: str, queue_id: str, status: str) -> None:
        """Adds or updates an entry; an updated one keeps its place in the queue."""
    async def delete_waiting(self, meeting_id: str, user_id: str) -> None: ...
    async def waiting_of_meeting(self, meeting_id: str, status: str | None = None) -> list[WaitingRow]:
        """In the order the users came."""
    async def clear_waiting(self, meeting_id: str | None = None) -> None:
        """One meeting's queue, or every queue."""
    async def count_waiting(self) -> int:
        """Entries still WAITING, over all meetings."""

    # recordings
    async def insert_recording(self, rec_id: str, meeting_id: str, starter_id: str, started_at: datetime) -> None: ...
    async def finish_recording(
        self, rec_id: str, stopped_at: datetime, path: str | None, size_bytes: int | None
    ) -> None: ...
    async def recordings(self, meeting_id: str | None = None) -> list[RecordingRow]:
        """Oldest first."""
