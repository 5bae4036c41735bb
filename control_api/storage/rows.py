"""The rows of durable state, as both store backends read and write them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class MeetingRow:
    id: str
    room_id: str
    name: str
    meeting_type: str
    expiration: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class WaitingRow:
    meeting_id: str
    user_id: str
    queue_id: str
    status: str


@dataclass(frozen=True)
class RecordingRow:
    id: str
    meeting_id: str
    starter_id: str
    started_at: datetime
    stopped_at: datetime | None
    path: str | None
    size_bytes: int | None
    status: str
