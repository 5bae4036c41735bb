"""The embedded backend: control_api.store's SQLite file, driven from one thread of its own.

The sync Store keeps the SQL and the row types; this wrapper only moves each call off the event
loop. One thread serialises the calls on the one connection (sqlite3 connections are not safe
for concurrent use), and each change is committed, as in Store, before the call returns.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from ..store import MeetingRow, RecordingRow, Store, WaitingRow
from .interface import StoreConflict, StoreUnavailable

T = TypeVar("T")

# SQLite's extended result codes for a taken key (Python 3.11 names them on the exception).
_KEY_TAKEN = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
# Locked past the busy timeout, disk full, I/O error, file gone or read-only: not a bug of ours.
_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY")


class SqliteStore:
    """AsyncStore over one SQLite file (WAL), for a single node."""

    def __init__(self, store: Store, thread: ThreadPoolExecutor) -> None:
        self._store = store
        self._thread = thread
        self._closed = False

    @classmethod
    async def open(cls, path: Path, busy_timeout: float = 5.0) -> SqliteStore:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            store = await asyncio.get_running_loop().run_in_executor(thread, Store, path, busy_timeout)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(store, thread)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorname", "") in _KEY_TAKEN:
                raise StoreConflict(str(exc)) from exc
            raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith(_UNAVAILABLE):
                raise StoreUnavailable(f"SQLite: {exc}") from exc
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._call(self._store.close)
        self._thread.shutdown(wait=True)

    # rooms and memberships
    async def create_room(self, room_id: str, created_at: datetime) -> None:
        await self._call(self._store.create_room, room_id, created_at)

    async def add_member(self, room_id: str, user_id: str, role: str) -> None:
        await self._call(self._store.add_member, room_id, user_id, role)

    async def member_role(self, room_id: str, user_id: str) -> str | None:
        return await self._call(self._store.member_role, room_id, user_id)

    async def rooms_of_user(self, user_id: str) -> dict[str, str]:
        return await self._call(self._store.rooms_of_user, user_id)

    async def members_of_room(self, room_id: str) -> dict[str, str]:
        return await self._call(self._store.members_of_room, room_id)

    # meetings
    async def insert_meeting(self, row: MeetingRow, owner: str | None = None) -> None:
        await self._call(self._store.insert_meeting, row, owner)

    async def delete_meeting(self, meeting_id: str) -> None:
        await self._call(self._store.delete_meeting, meeting_id)

    async def get_meeting(self, meeting_id: str) -> MeetingRow | None:
        return await self._call(self._store.get_meeting, meeting_id)

    async def meeting_of_room(self, room_id: str) -> MeetingRow | None:
        return await self._call(self._store.meeting_of_room, room_id)

    async def meetings_of_rooms(self, room_ids: list[str]) -> list[MeetingRow]:
        return await self._call(self._store.meetings_of_rooms, list(room_ids))

    async def expired_meetings(self, now: datetime) -> list[MeetingRow]:
        return await self._call(self._store.expired_meetings, now)

    # waiting queue
    async def waiting_entry(self, meeting_id: str, user_id: str) -> WaitingRow | None:
        return await self._call(self._store.waiting_entry, meeting_id, user_id)

    async def put_waiting(self, meeting_id: str, user_id: str, queue_id: str, status: str) -> None:
        await self._call(self._store.put_waiting, meeting_id, user_id, queue_id, status)

    async def delete_waiting(self, meeting_id: str, user_id: str) -> None:
        await self._call(self._store.delete_waiting, meeting_id, user_id)

    async def waiting_of_meeting(self, meeting_id: str, status: str | None = None) -> list[WaitingRow]:
        return await self._call(self._store.waiting_of_meeting, meeting_id, status)

    async def clear_waiting(self, meeting_id: str | None = None) -> None:
        await self._call(self._store.clear_waiting, meeting_id)

    async def count_waiting(self) -> int:
        return await self._call(self._store.count_waiting)

    # recordings
    async def insert_recording(self, rec_id: str, meeting_id: str, starter_id: str, started_at: datetime) -> None:
        await self._call(self._store.insert_recording, rec_id, meeting_id, starter_id, started_at)

    async def finish_recording(
        self, rec_id: str, stopped_at: datetime, path: str | None, size_bytes: int | None
    ) -> None:
        await self._call(self._store.finish_recording, rec_id, stopped_at, path, size_bytes)

    async def recordings(self, meeting_id: str | None = None) -> list[RecordingRow]:
        return await self._call(self._store.recordings, meeting_id)
