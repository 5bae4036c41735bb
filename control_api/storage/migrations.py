"""PostgreSQL schema, as numbered steps applied once each, in order, at start.

A later change adds a step at the end (never edits a released one): ALTER TABLE ... ADD COLUMN,
a new index. schema_migrations records what a database has; every node runs migrate() when it
starts, and an advisory lock makes nodes starting together apply each step exactly once.
"""

from __future__ import annotations

import asyncpg

# Same tables as the SQLite schema (control_api/storage/sqlite.py); times are timestamptz, and the waiting
# queue keeps its order in `seq` (SQLite uses rowid).
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE rooms (
            id TEXT PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE room_members (
            room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('owner', 'member')),
            PRIMARY KEY (room_id, user_id)
        );
        CREATE INDEX room_members_user ON room_members(user_id);
        CREATE TABLE meetings (
            id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            meeting_type TEXT NOT NULL CHECK (meeting_type IN ('permanent', 'scheduled')),
            expiration TIMESTAMPTZ,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE waiting (
            seq BIGINT GENERATED ALWAYS AS IDENTITY,
            meeting_id TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            queue_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('WAITING', 'ACCEPTED')),
            PRIMARY KEY (meeting_id, user_id)
        );
        CREATE TABLE recordings (
            id TEXT PRIMARY KEY,
            meeting_id TEXT NOT NULL,
            starter_id TEXT NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            stopped_at TIMESTAMPTZ,
            path TEXT,
            size_bytes BIGINT,
            status TEXT NOT NULL CHECK (status IN ('STARTED', 'STOPPED'))
        );
        """,
    ),
)

# Any fixed number, the same on every node: the key of the lock taken while migrating.
_LOCK_KEY = 0x5F0_5704E


# A step may rewrite a large table, and a node may wait for another one's steps: far longer
# than an ordinary call is allowed.
MIGRATION_TIMEOUT = 600.0


async def migrate(conn: asyncpg.Connection, timeout: float = MIGRATION_TIMEOUT) -> list[int]:
    """Applies the steps this database lacks, in one transaction; returns their numbers."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY, timeout=timeout)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql, timeout=timeout)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
        return applied
