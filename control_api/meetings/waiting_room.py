"""The waiting room of a scheduled meeting: who is not a member of its room waits there until a
moderator accepts him (he becomes a member) or rejects him (or he gives up himself)."""

from __future__ import annotations

import logging
from typing import Any

from ..auth import Principal
from ..errors import bad_request, forbidden, not_found
from ..events import make_event
from ..storage import StoreUnavailable
from ..storage.rows import MeetingRow
from .state import ACCEPTED, REJECTED, WAITING, LiveMeeting, MeetingState

log = logging.getLogger("meeting_sfu.domain")

__all__ = ["ACCEPTED", "REJECTED", "WAITING", "WaitingRoom"]


class WaitingRoom(MeetingState):
    async def _enter_waiting_room(
        self, row: MeetingRow, live: LiveMeeting, principal: Principal, queue_id: str
    ) -> str:
        """A join of a user who may not enter by himself (under the meeting's lock)."""
        uid = principal.user_id
        meeting_id = row.id
        entry = await self.store.waiting_entry(meeting_id, uid)
        if entry is not None and entry.status == ACCEPTED:
            # Accepted meanwhile: he enters, and the entry is spent.
            role = await self.role(principal, row.room_id)
            if self.hub.session(queue_id) is None:  # closed while we waited: he keeps his acceptance
                raise bad_request("queue-id is not an open events socket of this user", "bad_queue_id")
            await self._add_participant(row, live, uid, queue_id, role, principal.name)
            live.waiting_names.pop(uid, None)
            try:
                await self.store.delete_waiting(meeting_id, uid)
            except StoreUnavailable as exc:  # he is in: what is left is an acceptance used once more
                log.error("spent acceptance not deleted meeting=%s user=%s error=%s", meeting_id, uid, exc)
            return ACCEPTED
        if entry is not None:
            if entry.queue_id != queue_id:
                await self.store.put_waiting(meeting_id, uid, queue_id, WAITING)
                self._set_waiting_name(live, uid, principal.name)
                self.hub.to_queue(
                    entry.queue_id, make_event("MEETING_WAITING_PARTICIPANT_CLASHED", meetingId=meeting_id)
                )
            else:
                self._set_waiting_name(live, uid, principal.name)
            return WAITING
        await self.store.put_waiting(meeting_id, uid, queue_id, WAITING)
        self._set_waiting_name(live, uid, principal.name)
        log.info("user waiting meeting=%s user=%s", meeting_id, uid)
        await self._to_owners(
            row.room_id,
            make_event("MEETING_WAITING_PARTICIPANT_JOINED", meetingId=meeting_id, userId=uid, name=principal.name),
        )
        return WAITING

    @staticmethod
    def _set_waiting_name(live: LiveMeeting, uid: str, name: str | None) -> None:
        if name is None:
            live.waiting_names.pop(uid, None)
        else:
            live.waiting_names[uid] = name

    async def get_queue(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        row = await self._meeting(meeting_id)
        if await self._member(principal, row.room_id) != "owner":
            raise forbidden("only a moderator may see the waiting queue")
        users = [w.user_id for w in await self.store.waiting_of_meeting(meeting_id, WAITING)]
        body: dict[str, Any] = {"users": users}
        # Display names, an extension beside the seed's list of ids (which Carbonio clients
        # read as plain strings): present only when some waiting user has one.
        live = self._live.get(meeting_id)
        names = {u: live.waiting_names[u] for u in users if u in live.waiting_names} if live else {}
        if names:
            body["names"] = names
        return body

    async def update_queued_user(self, principal: Principal, meeting_id: str, user_id: str, status: str) -> None:
        row = await self._meeting(meeting_id)
        async with self._lock(meeting_id):
            entry = await self.store.waiting_entry(meeting_id, user_id)
            if entry is None or entry.status != WAITING:
                raise not_found("user is not waiting in this meeting's queue")
            is_owner = await self.role(principal, row.room_id) == "owner"
            if status == ACCEPTED and not is_owner:
                raise forbidden("only a moderator may accept a waiting user")
            if status == REJECTED and not (is_owner or principal.user_id == user_id):
                raise forbidden("only a moderator or the user himself may reject")
            if status == ACCEPTED:
                # Membership first: should the second write fail, he is a member still waiting,
                # and a moderator's second accept finishes the job.
                await self.store.add_member(row.room_id, user_id, "member")
                await self.store.put_waiting(meeting_id, user_id, entry.queue_id, ACCEPTED)
                type_ = "MEETING_WAITING_PARTICIPANT_ACCEPTED"
            else:
                await self.store.delete_waiting(meeting_id, user_id)
                live = self._live.get(meeting_id)
                if live is not None:
                    live.waiting_names.pop(user_id, None)
                type_ = "MEETING_WAITING_PARTICIPANT_REJECTED"
            log.info("waiting user %s meeting=%s user=%s", status.lower(), meeting_id, user_id)
            await self._to_owners(
                row.room_id, make_event(type_, meetingId=meeting_id, userId=user_id), also_queue=entry.queue_id
            )
