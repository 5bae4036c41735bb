"""Durable state behind one async interface: SQLite in data_dir by default, PostgreSQL when
`[storage] database_url` is set (DESIGN 9.2)."""

from __future__ import annotations

from ..config import Config
from .interface import AsyncStore, StoreConflict, StoreUnavailable
from .postgres import PostgresStore
from .rows import MeetingRow, RecordingRow, WaitingRow
from .sqlite import DB_FILENAME, SqliteStore

__all__ = [
    "DB_FILENAME",
    "AsyncStore",
    "MeetingRow",
    "RecordingRow",
    "StoreConflict",
    "StoreUnavailable",
    "WaitingRow",
    "open_store",
]


async def open_store(config: Config) -> AsyncStore:
    """The backend the configuration names, opened (PostgreSQL: connected and migrated)."""
    url = config.storage.database_url
    if not url:
        return await SqliteStore.open(config.data_path / DB_FILENAME)
    return await PostgresStore.open(url)  # the scheme was checked when the config was read
