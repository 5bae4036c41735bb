"""Joining and leaving a started meeting: a join from a second socket clashes with the first,
a closed events socket leaves every meeting joined from it, the last one out stops the meeting."""

from __future__ import annotations

import logging

from sfu.api import MediaError

from ..auth import Principal
from ..errors import bad_request, conflict, forbidden
from ..events import make_event
from ..storage.rows import MeetingRow
from .state import ACCEPTED, PERMANENT, LiveMeeting, MeetingState, Participant

log = logging.getLogger("meeting_sfu.domain")


class Joins(MeetingState):
    async def join(self, principal: Principal, meeting_id: str, queue_id: str) -> str:
        """ACCEPTED (a participant now) or WAITING (in the waiting room)."""
        row = await self._meeting(meeting_id)
        role = await self.role(principal, row.room_id)
        if row.meeting_type == PERMANENT and role is None:
            raise forbidden("not a member of the meeting's room")
        self._open_socket(principal, queue_id)
        uid = principal.user_id
        async with self._lock(meeting_id):
            live = self._live.get(meeting_id)
            if live is None:  # also when it was deleted while we waited: a delete stops it first
                raise bad_request("meeting is not started", "meeting_not_started")
            self._open_socket(principal, queue_id)  # it may have closed while we waited
            existing = live.participants.get(uid)
            if existing is not None:
                if existing.queue_id == queue_id:
                    raise conflict("already a participant from this queue")
                await self._clash(row, live, existing, queue_id, principal.name)
                return ACCEPTED
            if row.meeting_type == PERMANENT or role == "owner":
                await self._add_participant(row, live, uid, queue_id, role, principal.name)
                return ACCEPTED
            return await self._enter_waiting_room(row, live, principal, queue_id)

    def _open_socket(self, principal: Principal, queue_id: str) -> None:
        session = self.hub.session(queue_id)
        if session is None or session.user_id != principal.user_id:
            raise bad_request("queue-id is not an open events socket of this user", "bad_queue_id")

    async def _add_participant(
        self, row: MeetingRow, live: LiveMeeting, uid: str, queue_id: str, role: str | None, name: str | None
    ) -> None:
        """Under the lock, with no wait between the caller's check that the socket is open and
        here: a socket that closes afterwards finds him (socket_closed), never one before."""
        live.participants[uid] = Participant(
            user_id=uid,
            queue_id=queue_id,
            user_type="moderator" if role == "owner" else "registered",
            joined_at=self._clock(),
            name=name,
        )
        log.info("participant joined meeting=%s user=%s", row.id, uid)
        await self._to_room(
            row.room_id, make_event("MEETING_PARTICIPANT_JOINED", meetingId=row.id, userId=uid, name=name)
        )

    async def _clash(
        self, row: MeetingRow, live: LiveMeeting, existing: Participant, queue_id: str, name: str | None
    ) -> None:
        """The same user joins from another socket: the old one is kicked out."""
        uid = existing.user_id
        old_queue, existing.queue_id = existing.queue_id, queue_id  # before any wait, as in _add_participant
        self.hub.to_queue(old_queue, make_event("MEETING_PARTICIPANT_CLASHED", meetingId=row.id))
        await self._close_media(row, live, existing)
        await self._to_room(row.room_id, make_event("MEETING_PARTICIPANT_LEFT", meetingId=row.id, userId=uid))
        existing.audio = existing.video = existing.screen = False
        existing.joined_at = self._clock()
        existing.name = name
        log.info("participant clashed meeting=%s user=%s", row.id, uid)
        await self._to_room(
            row.room_id, make_event("MEETING_PARTICIPANT_JOINED", meetingId=row.id, userId=uid, name=name)
        )

    async def _close_media(self, row: MeetingRow, live: LiveMeeting, p: Participant) -> None:
        """Close a participant's PCs; the streams he published end for everyone."""
        try:
            await self.media.remove_participant(row.id, p.user_id)
        except MediaError as exc:
            log.warning("media remove failed meeting=%s error=%s", row.id, exc.message)
        for kind in ("video", "screen"):
            if getattr(p, kind):
                setattr(p, kind, False)
                self._to_participants(
                    live,
                    make_event(
                        "MEETING_MEDIA_STREAM_CHANGED",
                        meetingId=row.id,
                        userId=p.user_id,
                        mediaType=kind.upper(),
                        active=False,
                    ),
                )

    async def leave(self, principal: Principal, meeting_id: str) -> None:
        row = await self._meeting(meeting_id)
        await self._member(principal, row.room_id)
        async with self._lock(meeting_id):
            live = self._live.get(meeting_id)
            if live is None or principal.user_id not in live.participants:
                return
            await self._remove_participant(live.row, live, principal.user_id)

    async def _remove_participant(
        self, row: MeetingRow, live: LiveMeeting, uid: str, auto_stop: bool = True, stored: dict[str, str] | None = None
    ) -> None:
        p = live.participants.get(uid)
        if p is None:
            return
        await self._close_media(row, live, p)
        del live.participants[uid]
        log.info("participant left meeting=%s user=%s", row.id, uid)
        await self._to_room(
            row.room_id, make_event("MEETING_PARTICIPANT_LEFT", meetingId=row.id, userId=uid), stored=stored
        )
        if auto_stop and not live.participants:
            await self._stop(row, live)

    async def socket_opened(self, queue_id: str, user_id: str) -> None:
        """An events socket of this node opened (a cluster makes it known to every node)."""

    async def socket_closed(self, queue_id: str) -> None:
        """Closing an events socket leaves every meeting joined from it."""
        for meeting_id, live in list(self._live.items()):
            if any(p.queue_id == queue_id for p in live.participants.values()):
                await self.queue_closed(meeting_id, queue_id)

    async def queue_closed(self, meeting_id: str, queue_id: str) -> None:
        """The events socket `queue_id` closed: whoever joined this meeting from it leaves.
        Needs no store (the meeting's row is in memory): a socket's end is never lost."""
        async with self._lock(meeting_id):
            live = self._live.get(meeting_id)
            if live is None:
                return
            for p in list(live.participants.values()):
                if p.queue_id == queue_id and live.participants.get(p.user_id) is p:
                    await self._remove_participant(live.row, live, p.user_id)
