"""Event delivery: open /events sockets, and who receives what (DESIGN section 4).

The hub knows each socket's user and token grants; the stored memberships of a room come with
each room event (the caller read them from the store: the hub never waits on a database). It
holds no aiohttp objects: each socket is a `Session` with a bounded outgoing queue that the
websocket handler drains. A socket too slow to drain its queue is closed, never buffered forever.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """RFC 3339 with an offset and milliseconds, as every date on the wire."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")


def make_event(type_: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type_, "sentDate": iso(now_utc())}
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


@dataclass(eq=False)
class Session:
    """One open /events socket."""

    queue_id: str
    user_id: str
    grants: Mapping[str, str]
    outbox: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(1024))
    on_overflow: Callable[[], None] = lambda: None
    closed: bool = False

    def push(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.outbox.put_nowait(json.dumps(message, separators=(",", ":")))
        except asyncio.QueueFull:
            self.closed = True
            self.on_overflow()


class EventHub:
    """Routes events to sockets: by user, by queue, to room members or room owners."""

    def __init__(self, max_queue: int = 1024) -> None:
        self._max_queue = max_queue
        self._by_queue: dict[str, Session] = {}
        self._by_user: dict[str, set[Session]] = defaultdict(set)
        self.on_sent: Callable[[int], None] = lambda n: None

    def open(self, queue_id: str, user_id: str, grants: Mapping[str, str]) -> Session:
        session = Session(queue_id, user_id, dict(grants), asyncio.Queue(self._max_queue))
        self._by_queue[queue_id] = session
        self._by_user[user_id].add(session)
        return session

    def close(self, session: Session) -> None:
        session.closed = True
        self._by_queue.pop(session.queue_id, None)
        sessions = self._by_user.get(session.user_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_user[session.user_id]

    def session(self, queue_id: str) -> Session | None:
        return self._by_queue.get(queue_id)

    @property
    def count(self) -> int:
        return len(self._by_queue)

    def _deliver(self, sessions: Iterable[Session], event: dict[str, Any]) -> None:
        n = 0
        for s in sessions:
            s.push(event)
            n += 1
        if n:
            self.on_sent(n)

    def to_queue(self, queue_id: str, event: dict[str, Any]) -> None:
        session = self._by_queue.get(queue_id)
        if session is not None:
            self._deliver([session], event)

    def to_users(self, user_ids: Iterable[str], event: dict[str, Any]) -> None:
        targets: set[Session] = set()
        for uid in set(user_ids):
            targets |= self._by_user.get(uid, set())
        self._deliver(targets, event)

    def _room_sessions(self, room_id: str, stored: Mapping[str, str], owners_only: bool) -> set[Session]:
        targets: set[Session] = set()
        for session in self._by_queue.values():
            role = session.grants.get(room_id)
            stored_role = stored.get(session.user_id)
            if owners_only:
                if role == "owner" or stored_role == "owner":
                    targets.add(session)
            elif role or stored_role:
                targets.add(session)
        return targets

    def to_room_members(
        self, room_id: str, event: dict[str, Any], stored: Mapping[str, str], also: Iterable[str] = ()
    ) -> None:
        """Room members (by each socket's grants and the room's `stored` memberships, user id ->
        role), plus every socket of the users in `also` (e.g. waiting users)."""
        targets = self._room_sessions(room_id, stored, owners_only=False)
        for uid in also:
            targets |= self._by_user.get(uid, set())
        self._deliver(targets, event)

    def to_room_owners(
        self, room_id: str, event: dict[str, Any], stored: Mapping[str, str], also_queue: str | None = None
    ) -> None:
        targets = self._room_sessions(room_id, stored, owners_only=True)
        if also_queue and also_queue in self._by_queue:
            targets.add(self._by_queue[also_queue])
        self._deliver(targets, event)
