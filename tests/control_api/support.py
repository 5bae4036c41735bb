"""Shared steps of the control-plane tests: users with room grants, meetings, joins."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.helpers import EventsClient, ServerHandle, new_id

JOIN = {"audioStreamEnabled": False, "videoStreamEnabled": False}


@dataclass
class User:
    """A user, his token and (once opened) his /events sockets."""

    server: ServerHandle
    id: str
    token: str
    sockets: list[EventsClient] = field(default_factory=list)

    @property
    def ws(self) -> EventsClient:
        return self.sockets[0]

    async def connect(self) -> EventsClient:
        socket = await self.server.events(self.token)
        self.sockets.append(socket)
        return socket

    async def call(self, method: str, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.server.call(method, path, self.token, json, **kw)

    async def join(self, meeting_id: str, socket: EventsClient | None = None) -> tuple[int, Any]:
        queue = (socket or self.ws).queue_id
        return await self.call("POST", f"/meetings/{meeting_id}/join", JOIN, headers={"queue-id": queue})

    async def leave(self, meeting_id: str) -> tuple[int, Any]:
        return await self.call("POST", f"/meetings/{meeting_id}/leave")


async def user(
    server: ServerHandle, rooms: dict[str, str] | None = None, *, connect: bool = True, **kw: Any
) -> User:
    uid = new_id()
    u = User(server, uid, server.token(uid, rooms, **kw))
    if connect:
        await u.connect()
    return u


async def create_meeting(
    u: User, room: str | None, meeting_type: str = "permanent", name: str = "standup", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "meetingType": meeting_type, **extra}
    if room is not None:
        body["roomId"] = room
    status, meeting = await u.call("POST", "/meetings", body)
    assert status == 200, meeting
    return meeting


async def started_meeting(u: User, room: str | None, meeting_type: str = "permanent", **extra: Any) -> dict:
    meeting = await create_meeting(u, room, meeting_type, **extra)
    status, body = await u.call("POST", f"/meetings/{meeting['id']}/start")
    assert status == 200 and body["active"] is True, body
    return body


def is_error(body: Any) -> bool:
    """The error shape of DESIGN section 8: {"error": str, "message": str}."""
    return (
        isinstance(body, dict)
        and isinstance(body.get("error"), str)
        and isinstance(body.get("message"), str)
        and body["error"] != ""
    )


def of(ws: EventsClient, type_: str, meeting_id: str | None = None) -> list[dict[str, Any]]:
    return [m for m in ws.of_type(type_) if meeting_id is None or m.get("meetingId") == meeting_id]


def meeting_types(ws: EventsClient) -> list[str]:
    """The MEETING_* event types received, in order."""
    return [t for t in ws.types() if t.startswith("MEETING_")]
