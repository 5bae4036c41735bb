"""Events published cluster-wide, each with its audience; every node delivers them to its own sockets.

DESIGN section 4 says who receives each event: the members of a room (by each socket's own token
grants and the stored memberships), a room's owners, a user's every socket, one socket (queue),
the participants of a meeting. Only the node that holds a socket can apply those rules to it
(the grants live in that socket's token), so the publisher sends the audience, not a list of
sockets: `Audience` is the descriptor, as plain data, and each node's `deliver(audience, event)`
callback (the EventHub's rules) picks its own sockets.

The publishing node delivers to its own sockets at once; the others get the event through one
channel, `events`, in the order it was published. Publishing never waits for Redis: events go
through a bounded outbox drained by one task (so their order holds); when Redis is down or slow
and the outbox is full, events are dropped and counted, as pub/sub would lose them anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ClusterUnavailable
from .link import RedisLink, stop_task
from .subscriber import Subscription

log = logging.getLogger("meeting_sfu.cluster")

KINDS = ("queue", "users", "room_members", "room_owners", "participants")


@dataclass(frozen=True, slots=True)
class Audience:
    """Who an event is for, as the EventHub's methods name them today.

    - queue(q): one socket;
    - users(ids): every socket of each user;
    - room_members(room, also=ids): members of the room, plus every socket of the users `also`
      (e.g. the waiting users, for MEETING_STOPPED);
    - room_owners(room, also_queue=q): owners of the room, plus the socket `q`;
    - participants(meeting, ids): the participants of a meeting (their users' sockets), named
      by the owner, the only node that knows them.
    """

    kind: str
    room_id: str | None = None
    meeting_id: str | None = None
    user_ids: tuple[str, ...] = ()
    queue_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"audience kind {self.kind!r}: one of {', '.join(KINDS)}")

    @classmethod
    def queue(cls, queue_id: str) -> Audience:
        return cls("queue", queue_id=queue_id)

    @classmethod
    def users(cls, user_ids: Iterable[str]) -> Audience:
        return cls("users", user_ids=tuple(sorted(set(user_ids))))

    @classmethod
    def room_members(cls, room_id: str, also: Iterable[str] = ()) -> Audience:
        return cls("room_members", room_id=room_id, user_ids=tuple(sorted(set(also))))

    @classmethod
    def room_owners(cls, room_id: str, also_queue: str | None = None) -> Audience:
        return cls("room_owners", room_id=room_id, queue_id=also_queue)

    @classmethod
    def participants(cls, meeting_id: str, user_ids: Iterable[str]) -> Audience:
        return cls("participants", meeting_id=meeting_id, user_ids=tuple(sorted(set(user_ids))))

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for name in ("room_id", "meeting_id", "queue_id"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.user_ids:
            data["user_ids"] = list(self.user_ids)
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Audience:
        return cls(
            str(data["kind"]),
            room_id=data.get("room_id"),
            meeting_id=data.get("meeting_id"),
            user_ids=tuple(data.get("user_ids", ())),
            queue_id=data.get("queue_id"),
        )


Deliver = Callable[[Audience, dict[str, Any]], None]


class EventBus:
    """Publishes events to every node and hands the others' events to `deliver`.

    `deliver(audience, event)` runs on the event loop for each event, this node's own included;
    it must not block (the EventHub only queues to sockets).
    """

    def __init__(self, link: RedisLink, node_id: str, deliver: Deliver, *, max_outbox: int = 4096) -> None:
        self.link = link
        self.node_id = node_id
        self._deliver = deliver
        self._outbox: asyncio.Queue = asyncio.Queue(max_outbox)
        self._sender: asyncio.Task | None = None
        self.subscription = Subscription(link, [link.keys.events], self._on_message, name=f"events-{node_id}")
        self.dropped = 0  # events not sent to the other nodes (outbox full or Redis down)
        self.sent = 0
        self.received = 0

    async def start(self, wait: float = 2.0) -> None:
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(), name=f"cluster-events-{self.node_id}")
        await self.subscription.start(wait)

    async def stop(self) -> None:
        await self.subscription.stop()
        task, self._sender = self._sender, None
        await stop_task(task)

    def publish(self, audience: Audience, event: dict[str, Any]) -> None:
        """Delivers `event` to this node's sockets now and queues it for the other nodes."""
        self._deliver(audience, event)
        message = json.dumps({"origin": self.node_id, "to": audience.to_data(), "event": event}, separators=(",", ":"))
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            self._drop("outbox full")

    async def drain(self, timeout: float = 5.0) -> None:
        """Waits until every queued event has been handed to Redis (or dropped)."""
        async with asyncio.timeout(timeout):
            await self._outbox.join()

    def _drop(self, why: str) -> None:
        if not self.dropped % 1000:  # the first of each thousand, not one line per event
            log.warning("cluster events dropped node=%s reason=%s dropped=%d", self.node_id, why, self.dropped + 1)
        self.dropped += 1

    async def _send(self) -> None:
        channel = self.link.keys.events
        while True:
            message = await self._outbox.get()
            try:
                await self.link.run("publish event", lambda m=message: self.link.client.publish(channel, m))
                self.sent += 1
            except ClusterUnavailable:
                self._drop("redis unavailable")
            except Exception:
                log.exception("cluster event publish failed")
                self.dropped += 1
            finally:
                self._outbox.task_done()

    async def _on_message(self, channel: str, data: bytes) -> None:
        try:
            message = json.loads(data)
            if message.get("origin") == self.node_id:
                return  # delivered here when it was published
            audience = Audience.from_data(message["to"])
            event = message["event"]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("cluster events dropped a malformed message")
            return
        self.received += 1
        self._deliver(audience, event)
