"""The events hub of a node in a cluster: events go to every node, sockets are known everywhere.

The domain calls the same methods as on a single node (`to_room_members`, `to_users`, ...). Here
each call becomes one `EventBus.publish` with its `Audience`; every node (this one at once, the
others through Redis, in order) hands it to `deliver`, which applies DESIGN section 4's rules to
its own sockets with the plain EventHub. A room event carries the room's stored memberships with
it (the publisher read them), so no node waits on the database to deliver.

`session(queue_id)` answers for this node's sockets and for the remote ones that a join brought
here (`expect_remote`, then `confirm_remote` once the socket directory vouched for it); a remote
socket's close (`forget_remote`) takes it away again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..events import EventHub, Session
from .bus import Audience, EventBus

log = logging.getLogger("meeting_sfu.cluster")

MAX_REMOTE = 65536  # remote sockets remembered at once (the oldest are forgotten first)


@dataclass(frozen=True, slots=True)
class RemoteSocket:
    """An open /events socket of another node, as a join needs to know it."""

    queue_id: str
    user_id: str


class ClusterHub(EventHub):
    def __init__(self, max_queue: int = 1024) -> None:
        super().__init__(max_queue)
        self.bus: EventBus | None = None  # set when the cluster node starts
        # queue id -> its user, or None while a join looks it up in the socket directory.
        self._remote: OrderedDict[str, str | None] = OrderedDict()

    # --- remote sockets ---------------------------------------------------------------------

    def session(self, queue_id: str) -> Session | RemoteSocket | None:  # type: ignore[override]
        local = super().session(queue_id)
        if local is not None:
            return local
        user = self._remote.get(queue_id)
        return RemoteSocket(queue_id, user) if user is not None else None

    def local_session(self, queue_id: str) -> Session | None:
        return super().session(queue_id)

    def expect_remote(self, queue_id: str) -> None:
        """Before the directory is asked: a close that arrives meanwhile cancels the entry."""
        if queue_id not in self._remote:
            self._remote[queue_id] = None
            while len(self._remote) > MAX_REMOTE:
                self._remote.popitem(last=False)

    def confirm_remote(self, queue_id: str, user_id: str | None) -> None:
        """The directory's answer: the socket's user, or None (not an open socket)."""
        if user_id is None:
            if self._remote.get(queue_id) is None:
                self._remote.pop(queue_id, None)
            return
        if queue_id in self._remote:  # else it closed while the directory was asked
            self._remote[queue_id] = user_id
            self._remote.move_to_end(queue_id)

    def forget_remote(self, queue_id: str) -> None:
        self._remote.pop(queue_id, None)

    # --- events to every node ---------------------------------------------------------------

    def _publish(self, audience: Audience, event: dict[str, Any], stored: Mapping[str, str] | None = None) -> None:
        envelope: dict[str, Any] = {"event": event}
        if stored:
            envelope["members"] = dict(stored)
        if self.bus is None:  # not started (or stopped): this node's sockets only
            self.deliver(audience, envelope)
        else:
            self.bus.publish(audience, envelope)

    def deliver(self, audience: Audience, envelope: dict[str, Any]) -> None:
        """An event from any node (this one included), to this node's sockets by §4's rules."""
        try:
            event = envelope["event"]
            stored = envelope.get("members") or {}
            kind = audience.kind
            if kind == "queue":
                super().to_queue(audience.queue_id or "", event)
            elif kind in ("users", "participants"):
                super().to_users(audience.user_ids, event)
            elif kind == "room_members":
                super().to_room_members(audience.room_id or "", event, stored, also=audience.user_ids)
            elif kind == "room_owners":
                super().to_room_owners(audience.room_id or "", event, stored, also_queue=audience.queue_id)
        except (KeyError, TypeError, AttributeError):
            log.warning("cluster event with a malformed envelope dropped")

    def to_queue(self, queue_id: str, event: dict[str, Any]) -> None:
        self._publish(Audience.queue(queue_id), event)

    def to_users(self, user_ids: Iterable[str], event: dict[str, Any]) -> None:
        self._publish(Audience.users(user_ids), event)

    def to_room_members(
        self, room_id: str, event: dict[str, Any], stored: Mapping[str, str], also: Iterable[str] = ()
    ) -> None:
        self._publish(Audience.room_members(room_id, also), event, stored)

    def to_room_owners(
        self, room_id: str, event: dict[str, Any], stored: Mapping[str, str], also_queue: str | None = None
    ) -> None:
        self._publish(Audience.room_owners(room_id, also_queue), event, stored)
