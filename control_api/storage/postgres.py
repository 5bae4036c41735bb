"""The shared backend: PostgreSQL through asyncpg, for one node or a cluster (DESIGN 9.2).

A bounded pool; every change is committed before the call returns. Nothing waits on the server
for long: connecting, waiting for a pooled connection and each statement have time limits, and
a call that cannot reach the server raises StoreUnavailable. Connections the server dropped are
replaced by the pool on the next call, so the store recovers by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg

from .interface import StoreConflict, StoreUnavailable
from .migrations import migrate
from .rows import MeetingRow, RecordingRow, WaitingRow

T = TypeVar("T")

# What a dead, stopped, restarting or saturated server looks like to asyncpg.
_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    # A connection whose protocol state the loss of its server left inconsistent.
    asyncpg.InternalClientError,
)

# A connection found closed: the statement may not even have reached the server.
_CONNECTION_LOST = (asyncpg.ConnectionDoesNotExistError, ConnectionError)

_MEETING_COLS = "id, room_id, name, meeting_type, expiration, created_at"
_REC_COLS = "id, meeting_id, starter_id, started_at, stopped_at, path, size_bytes, status"
_WAITING_COLS = "meeting_id, user_id, queue_id, status"


def _where(url: str) -> str:
    """host:port/database of a URL, without its credentials, for error messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


def _meeting(r: asyncpg.Record | None) -> MeetingRow | None:
    return MeetingRow(*r.values()) if r is not None else None


class PostgresStore:
    """AsyncStore over a PostgreSQL database."""

    def __init__(self, pool: asyncpg.Pool, where: str, call_timeout: float) -> None:
        self._pool = pool
        self._where = where
        self._call_timeout = call_timeout

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 2.0,
        call_timeout: float = 3.0,
    ) -> PostgresStore:
        """Connects and migrates the schema; StoreUnavailable when the server cannot be reached."""
        where = _where(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=connect_timeout,
                command_timeout=call_timeout,
                # Idle connections are closed after a while, so a pool does not hold a stale one
                # across a long quiet spell (a failover, a proxy's idle cut).
                max_inactive_connection_lifetime=60.0,
            )
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"PostgreSQL at {where} unreachable: {exc or type(exc).__name__}") from exc
        store = cls(pool, where, call_timeout)
        try:
            async with store._conn() as conn:
                await migrate(conn)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), self._call_timeout)
        except TimeoutError:
            self._pool.terminate()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; any sign of an unreachable server becomes StoreUnavailable."""
        try:
            # The timeout bounds the wait for a connection (and a new connection's set-up), and
            # also the reset when it goes back to the pool.
            async with self._pool.acquire(timeout=self._call_timeout) as conn:
                try:
                    yield conn
                except _UNREACHABLE:
                    # Not reused, and not reset either: resetting waits on a server that may be hung.
                    with contextlib.suppress(asyncpg.InterfaceError):  # the pool may have let it go already
                        conn.terminate()
                    raise
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(exc.detail or str(exc)) from exc
        except _UNREACHABLE as exc:
            if isinstance(exc, _CONNECTION_LOST):
                # The server closed it (a restart, a crash): the idle ones in the pool are as dead,
                # even where the loop has not seen it yet. Each is replaced when next acquired.
                await self._pool.expire_connections()
            raise StoreUnavailable(f"PostgreSQL at {self._where} unreachable: {exc or type(exc).__name__}") from exc

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]], *, idempotent: bool = True) -> T:
        """Runs `op` on a pooled connection. A call that may safely run twice is tried once more
        when its connection turns out to be lost (closed by a server that has since come back);
        never after a time limit, so no call waits twice as long."""
        try:
            async with self._conn() as conn:
                return await op(conn)
        except StoreUnavailable as exc:
            if not (idempotent and isinstance(exc.__cause__, _CONNECTION_LOST)):
                raise
        async with self._conn() as conn:
            return await op(conn)

    async def _execute(self, sql: str, *args: object, idempotent: bool = True) -> None:
        await self._run(lambda conn: conn.execute(sql, *args), idempotent=idempotent)

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        return await self._run(lambda conn: conn.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        return await self._run(lambda conn: conn.fetchrow(sql, *args))

    # rooms and memberships
    async def create_room(self, room_id: str, created_at: datetime) -> None:
        await self._execute(
            "INSERT INTO rooms (id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING", room_id, created_at
        )

    async def add_member(self, room_id: str, user_id: str, role: str) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO rooms (id, created_at) VALUES ($1, now()) ON CONFLICT DO NOTHING", room_id
                )
                await conn.execute(
                    "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, $3) "
                    "ON CONFLICT (room_id, user_id) DO UPDATE SET role = "
                    "CASE WHEN room_members.role = 'owner' THEN 'owner' ELSE excluded.role END",
                    room_id,
                    user_id,
                    role,
                )

        await self._run(op)

    async def member_role(self, room_id: str, user_id: str) -> str | None:
        row = await self._fetchrow(
            "SELECT role FROM room_members WHERE room_id = $1 AND user_id = $2", room_id, user_id
        )
        return row["role"] if row else None

    async def rooms_of_user(self, user_id: str) -> dict[str, str]:
        rows = await self._fetch("SELECT room_id, role FROM room_members WHERE user_id = $1", user_id)
        return {r["room_id"]: r["role"] for r in rows}

    async def members_of_room(self, room_id: str) -> dict[str, str]:
        rows = await self._fetch("SELECT user_id, role FROM room_members WHERE room_id = $1", room_id)
        return {r["user_id"]: r["role"] for r in rows}

    # meetings
    async def insert_meeting(self, row: MeetingRow, owner: str | None = None) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO rooms (id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    row.room_id,
                    row.created_at,
                )
                if owner is not None:
                    await conn.execute(
                        "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, 'owner') "
                        "ON CONFLICT (room_id, user_id) DO UPDATE SET role = 'owner'",
                        row.room_id,
                        owner,
                    )
                await conn.execute(
                    f"INSERT INTO meetings ({_MEETING_COLS}) VALUES ($1, $2, $3, $4, $5, $6)",
                    row.id,
                    row.room_id,
                    row.name,
                    row.meeting_type,
                    row.expiration,
                    row.created_at,
                )

        # Not tried twice: had the first try committed, the second would answer StoreConflict.
        await self._run(op, idempotent=False)

    async def delete_meeting(self, meeting_id: str) -> None:
        await self._execute("DELETE FROM meetings WHERE id = $1", meeting_id)

    async def get_meeting(self, meeting_id: str) -> MeetingRow | None:
        return _meeting(await self._fetchrow(f"SELECT {_MEETING_COLS} FROM meetings WHERE id = $1", meeting_id))

    async def meeting_of_room(self, room_id: str) -> MeetingRow | None:
        return _meeting(await self._fetchrow(f"SELECT {_MEETING_COLS} FROM meetings WHERE room_id = $1", room_id))

    async def meetings_of_rooms(self, room_ids: list[str]) -> list[MeetingRow]:
        rows = await self._fetch(
            f"SELECT {_MEETING_COLS} FROM meetings WHERE room_id = ANY($1::text[]) ORDER BY created_at, id",
            list(room_ids),
        )
        return [MeetingRow(*r.values()) for r in rows]

    async def expired_meetings(self, now: datetime) -> list[MeetingRow]:
        rows = await self._fetch(
            f"SELECT {_MEETING_COLS} FROM meetings WHERE meeting_type = 'scheduled' "
            "AND expiration IS NOT NULL AND expiration <= $1",
            now,
        )
        return [MeetingRow(*r.values()) for r in rows]

    # waiting queue
    async def waiting_entry(self, meeting_id: str, user_id: str) -> WaitingRow | None:
        row = await self._fetchrow(
            f"SELECT {_WAITING_COLS} FROM waiting WHERE meeting_id = $1 AND user_id = $2", meeting_id, user_id
        )
        return WaitingRow(*row.values()) if row else None

    async def put_waiting(self, meeting_id: str, user_id: str, queue_id: str, status: str) -> None:
        await self._execute(
            f"INSERT INTO waiting ({_WAITING_COLS}) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (meeting_id, user_id) DO UPDATE SET queue_id = excluded.queue_id, status = excluded.status",
            meeting_id,
            user_id,
            queue_id,
            status,
        )

    async def delete_waiting(self, meeting_id: str, user_id: str) -> None:
        await self._execute("DELETE FROM waiting WHERE meeting_id = $1 AND user_id = $2", meeting_id, user_id)

    async def waiting_of_meeting(self, meeting_id: str, status: str | None = None) -> list[WaitingRow]:
        rows = await self._fetch(
            f"SELECT {_WAITING_COLS} FROM waiting WHERE meeting_id = $1 AND ($2::text IS NULL OR status = $2) "
            "ORDER BY seq",
            meeting_id,
            status,
        )
        return [WaitingRow(*r.values()) for r in rows]

    async def clear_waiting(self, meeting_id: str | None = None) -> None:
        if meeting_id is None:
            await self._execute("DELETE FROM waiting")
        else:
            await self._execute("DELETE FROM waiting WHERE meeting_id = $1", meeting_id)

    async def count_waiting(self) -> int:
        row = await self._fetchrow("SELECT count(*) AS n FROM waiting WHERE status = 'WAITING'")
        return int(row["n"]) if row else 0

    # recordings
    async def insert_recording(self, rec_id: str, meeting_id: str, starter_id: str, started_at: datetime) -> None:
        await self._execute(
            "INSERT INTO recordings (id, meeting_id, starter_id, started_at, status) "
            "VALUES ($1, $2, $3, $4, 'STARTED')",
            rec_id,
            meeting_id,
            starter_id,
            started_at,
            idempotent=False,
        )

    async def finish_recording(
        self, rec_id: str, stopped_at: datetime, path: str | None, size_bytes: int | None
    ) -> None:
        await self._execute(
            "UPDATE recordings SET status = 'STOPPED', stopped_at = $1, path = $2, size_bytes = $3 WHERE id = $4",
            stopped_at,
            path,
            size_bytes,
            rec_id,
        )

    async def recordings(self, meeting_id: str | None = None) -> list[RecordingRow]:
        rows = await self._fetch(
            f"SELECT {_REC_COLS} FROM recordings WHERE ($1::text IS NULL OR meeting_id = $1) ORDER BY started_at",
            meeting_id,
        )
        return [RecordingRow(*r.values()) for r in rows]
