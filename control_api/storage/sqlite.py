"""The embedded backend: one SQLite file in data_dir (WAL), driven from one thread of its own.

SqliteDb holds the SQL, synchronous; SqliteStore moves each of its calls off the event loop. One
thread serialises the calls on the one connection (sqlite3 connections are not safe for
concurrent use), and each change is committed before the call returns, so an answered request
survives `kill -9`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from .interface import StoreConflict, StoreUnavailable
from .rows import MeetingRow, RecordingRow, WaitingRow

T = TypeVar("T")

# The SQLite file's name inside [storage] data_dir.
DB_FILENAME = "meeting-sfu.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS room_members (
    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX IF NOT EXISTS room_members_user ON room_members(user_id);
CREATE TABLE IF NOT EXISTS meetings (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    meeting_type TEXT NOT NULL CHECK (meeting_type IN ('permanent', 'scheduled')),
    expiration TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS waiting (
    meeting_id TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('WAITING', 'ACCEPTED')),
    PRIMARY KEY (meeting_id, user_id)
);
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    meeting_id TEXT NOT NULL,
    starter_id TEXT NOT NULL,
    started_at TEXT NOT NULL,
    stopped_at TEXT,
    path TEXT,
    size_bytes INTEGER,
    status TEXT NOT NULL CHECK (status IN ('STARTED', 'STOPPED'))
);
"""


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class SqliteDb:
    """The SQL of the SQLite file, synchronous: run on SqliteStore's thread only. Every method
    is one short transaction."""

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        """`busy_timeout`: how long a statement waits for another connection's write lock."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple = ()) -> int:
        return self._db.execute(sql, args).rowcount  # autocommit: one statement, one transaction

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """Several statements as one transaction (the connection autocommits otherwise: a
        `with connection` block alone would commit each statement on its own)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled it back itself (disk full, I/O)
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # rooms and memberships
    def create_room(self, room_id: str, created_at: datetime) -> None:
        self._write(
            "INSERT OR IGNORE INTO rooms (id, created_at) VALUES (?, ?)",
            (room_id, created_at.isoformat()),
        )

    def add_member(self, room_id: str, user_id: str, role: str) -> None:
        """Stores a membership; an existing one keeps the higher role."""
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO rooms (id, created_at) VALUES (?, datetime('now'))",
                (room_id,),
            )
            self._db.execute(
                "INSERT INTO room_members (room_id, user_id, role) VALUES (?, ?, ?) "
                "ON CONFLICT (room_id, user_id) DO UPDATE SET role = "
                "CASE WHEN room_members.role = 'owner' THEN 'owner' ELSE excluded.role END",
                (room_id, user_id, role),
            )

    def member_role(self, room_id: str, user_id: str) -> str | None:
        row = self._db.execute(
            "SELECT role FROM room_members WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        ).fetchone()
        return row[0] if row else None

    def rooms_of_user(self, user_id: str) -> dict[str, str]:
        rows = self._db.execute(
            "SELECT room_id, role FROM room_members WHERE user_id = ?", (user_id,)
        ).fetchall()
        return dict(rows)

    def members_of_room(self, room_id: str) -> dict[str, str]:
        rows = self._db.execute(
            "SELECT user_id, role FROM room_members WHERE room_id = ?", (room_id,)
        ).fetchall()
        return dict(rows)

    # meetings
    def insert_meeting(self, row: MeetingRow, owner: str | None = None) -> None:
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO rooms (id, created_at) VALUES (?, ?)",
                (row.room_id, row.created_at.isoformat()),
            )
            self._db.execute(
                "INSERT INTO meetings (id, room_id, name, meeting_type, expiration, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    row.id,
                    row.room_id,
                    row.name,
                    row.meeting_type,
                    row.expiration.isoformat() if row.expiration else None,
                    row.created_at.isoformat(),
                ),
            )
            # After the meeting: a taken room fails before the membership is written.
            if owner is not None:
                self._db.execute(
                    "INSERT INTO room_members (room_id, user_id, role) VALUES (?, ?, 'owner') "
                    "ON CONFLICT (room_id, user_id) DO UPDATE SET role = 'owner'",
                    (row.room_id, owner),
                )

    def delete_meeting(self, meeting_id: str) -> None:
        self._write("DELETE FROM meetings WHERE id = ?", (meeting_id,))

    def _meeting(self, row: tuple | None) -> MeetingRow | None:
        if row is None:
            return None
        return MeetingRow(row[0], row[1], row[2], row[3], _dt(row[4]), _dt(row[5]))  # type: ignore[arg-type]

    _MEETING_COLS = "id, room_id, name, meeting_type, expiration, created_at"

    def get_meeting(self, meeting_id: str) -> MeetingRow | None:
        return self._meeting(
            self._db.execute(
                f"SELECT {self._MEETING_COLS} FROM meetings WHERE id = ?", (meeting_id,)
            ).fetchone()
        )

    def meeting_of_room(self, room_id: str) -> MeetingRow | None:
        return self._meeting(
            self._db.execute(
                f"SELECT {self._MEETING_COLS} FROM meetings WHERE room_id = ?", (room_id,)
            ).fetchone()
        )

    def meetings_of_rooms(self, room_ids: list[str]) -> list[MeetingRow]:
        out: list[MeetingRow] = []
        for start in range(0, len(room_ids), 500):
            chunk = room_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT {self._MEETING_COLS} FROM meetings WHERE room_id IN ({marks}) "
                "ORDER BY created_at, id",
                chunk,
            ).fetchall()
            out.extend(self._meeting(r) for r in rows)  # type: ignore[misc]
        # Each chunk is sorted by SQLite; the whole answer must be too.
        out.sort(key=lambda m: (m.created_at, m.id))
        return out

    def expired_meetings(self, now: datetime) -> list[MeetingRow]:
        rows = self._db.execute(
            f"SELECT {self._MEETING_COLS} FROM meetings "
            "WHERE meeting_type = 'scheduled' AND expiration IS NOT NULL"
        ).fetchall()
        out = [self._meeting(r) for r in rows]
        return [m for m in out if m and m.expiration and m.expiration <= now]

    # waiting queue
    def waiting_entry(self, meeting_id: str, user_id: str) -> WaitingRow | None:
        row = self._db.execute(
            "SELECT meeting_id, user_id, queue_id, status FROM waiting "
            "WHERE meeting_id = ? AND user_id = ?",
            (meeting_id, user_id),
        ).fetchone()
        return WaitingRow(*row) if row else None

    def put_waiting(self, meeting_id: str, user_id: str, queue_id: str, status: str) -> None:
        self._write(
            "INSERT INTO waiting (meeting_id, user_id, queue_id, status) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (meeting_id, user_id) DO UPDATE SET queue_id = excluded.queue_id, "
            "status = excluded.status",
            (meeting_id, user_id, queue_id, status),
        )

    def delete_waiting(self, meeting_id: str, user_id: str) -> None:
        self._write(
            "DELETE FROM waiting WHERE meeting_id = ? AND user_id = ?", (meeting_id, user_id)
        )

    def waiting_of_meeting(self, meeting_id: str, status: str | None = None) -> list[WaitingRow]:
        sql = "SELECT meeting_id, user_id, queue_id, status FROM waiting WHERE meeting_id = ?"
        args: tuple = (meeting_id,)
        if status:
            sql += " AND status = ?"
            args += (status,)
        return [WaitingRow(*r) for r in self._db.execute(sql + " ORDER BY rowid", args)]

    def clear_waiting(self, meeting_id: str | None = None) -> None:
        if meeting_id is None:
            self._write("DELETE FROM waiting")
        else:
            self._write("DELETE FROM waiting WHERE meeting_id = ?", (meeting_id,))

    def count_waiting(self) -> int:
        return self._db.execute("SELECT count(*) FROM waiting WHERE status = 'WAITING'").fetchone()[0]

    # recordings
    _REC_COLS = "id, meeting_id, starter_id, started_at, stopped_at, path, size_bytes, status"

    def insert_recording(self, rec_id: str, meeting_id: str, starter_id: str, started_at: datetime) -> None:
        self._write(
            "INSERT INTO recordings (id, meeting_id, starter_id, started_at, status) "
            "VALUES (?, ?, ?, ?, 'STARTED')",
            (rec_id, meeting_id, starter_id, started_at.isoformat()),
        )

    def finish_recording(
        self, rec_id: str, stopped_at: datetime, path: str | None, size_bytes: int | None
    ) -> None:
        self._write(
            "UPDATE recordings SET status = 'STOPPED', stopped_at = ?, path = ?, size_bytes = ? "
            "WHERE id = ?",
            (stopped_at.isoformat(), path, size_bytes, rec_id),
        )

    def recordings(self, meeting_id: str | None = None) -> list[RecordingRow]:
        sql = f"SELECT {self._REC_COLS} FROM recordings"
        args: tuple = ()
        if meeting_id:
            sql += " WHERE meeting_id = ?"
            args = (meeting_id,)
        rows = self._db.execute(sql + " ORDER BY started_at", args).fetchall()
        return [
            RecordingRow(r[0], r[1], r[2], _dt(r[3]), _dt(r[4]), r[5], r[6], r[7])  # type: ignore[arg-type]
            for r in rows
        ]

# SQLite's extended result codes for a taken key (Python 3.11 names them on the exception).
_KEY_TAKEN = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
# Locked past the busy timeout, disk full, I/O error, file gone or read-only: not a bug of ours.
_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY")


class SqliteStore:
    """AsyncStore over one SQLite file (WAL), for a single node."""

    def __init__(self, store: SqliteDb, thread: ThreadPoolExecutor) -> None:
        self._store = store
        self._thread = thread
        self._closed = False

    @classmethod
    async def open(cls, path: Path, busy_timeout: float = 5.0) -> SqliteStore:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            store = await asyncio.get_running_loop().run_in_executor(thread, SqliteDb, path, busy_timeout)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(store, thread)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:  # e.g. a socket closing after the app's clean-up: as for a dead server
            raise StoreUnavailable("SQLite store closed")
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
        await asyncio.get_running_loop().run_in_executor(self._thread, self._store.close)
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
