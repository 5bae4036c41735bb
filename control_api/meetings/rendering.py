"""The JSON bodies of meetings, participants and recordings, as the API answers them."""

from __future__ import annotations

from typing import Any

from ..events import iso
from ..storage.rows import MeetingRow, RecordingRow
from .state import LiveMeeting, Participant


def render_participant(p: Participant) -> dict[str, Any]:
    body = {
        "userId": p.user_id,
        "userType": p.user_type,
        "queueId": p.queue_id,
        "audioStreamEnabled": p.audio,
        "videoStreamEnabled": p.video,
        "screenStreamEnabled": p.screen,
        "joinedAt": iso(p.joined_at),
    }
    if p.name is not None:
        body["name"] = p.name  # an extension Carbonio clients ignore (DESIGN section 4)
    return body


def render_meeting(row: MeetingRow, live: LiveMeeting | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "roomId": row.room_id,
        "active": live is not None,
        "participants": [render_participant(p) for p in live.participants.values()] if live else [],
        "createdAt": iso(row.created_at),
        "meetingType": row.meeting_type,
    }
    if live:
        body["startedAt"] = iso(live.started_at)
        if live.recording:
            body["recStartedAt"] = iso(live.recording.started_at)
            body["recUserId"] = live.recording.starter_id
    return body


def render_recording(r: RecordingRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "meetingId": r.meeting_id,
        "starterId": r.starter_id,
        "startedAt": iso(r.started_at),
        "stoppedAt": iso(r.stopped_at) if r.stopped_at else None,
        "path": r.path,
        "sizeBytes": r.size_bytes,
        "status": r.status,
    }
