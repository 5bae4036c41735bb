"""A meeting's life: created, read, started, stopped (by a call, its last participant leaving, or
its media worker dying), deleted, expired."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sfu.api import MediaError

from ..auth import Principal
from ..errors import bad_request, conflict, not_found
from ..events import iso, make_event
from ..storage import StoreConflict, StoreUnavailable
from ..storage.rows import MeetingRow
from .media import media_errors
from .rendering import render_meeting
from .state import SCHEDULED, LiveMeeting, MeetingState

log = logging.getLogger("meeting_sfu.domain")


class Lifecycle(MeetingState):
    def render(self, row: MeetingRow) -> dict[str, Any]:
        return render_meeting(row, self._live.get(row.id))

    # --- reads -----------------------------------------------------------------------------

    async def public_meeting(self, meeting_id: str) -> dict[str, Any]:
        row = await self.store.get_meeting(meeting_id)
        if row is None or row.meeting_type != SCHEDULED:
            raise not_found("meeting not found")
        return {"name": row.name}

    async def list_meetings(self, principal: Principal) -> list[dict[str, Any]]:
        rooms = set(principal.grants) | set(await self.store.rooms_of_user(principal.user_id))
        return [self.render(row) for row in await self.store.meetings_of_rooms(sorted(rooms))]

    async def get_meeting(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        row = await self._meeting(meeting_id)
        await self._member(principal, row.room_id)
        return self.render(row)

    # --- create and delete -----------------------------------------------------------------

    async def create_meeting(
        self,
        principal: Principal,
        name: str,
        meeting_type: str,
        room_id: str | None,
        expiration: datetime | None,
    ) -> dict[str, Any]:
        now = self._clock()
        # Whatever the type (a permanent meeting never expires, but a past date is a mistake);
        # it depends on the body alone, so it comes before rights (DESIGN section 8).
        if expiration is not None and expiration <= now:
            raise bad_request("expiration is in the past")
        if room_id is not None:
            await self._member(principal, room_id)
            if await self.store.meeting_of_room(room_id) is not None:
                raise conflict("the room already has a meeting")
        new_room = room_id is None
        row = MeetingRow(
            id=str(uuid.uuid4()),
            room_id=room_id or str(uuid.uuid4()),
            name=name,
            meeting_type=meeting_type,
            expiration=expiration,
            created_at=now,
        )
        try:
            # One transaction: a new room never exists without its owner.
            await self.store.insert_meeting(row, owner=principal.user_id if new_room else None)
        except StoreConflict:  # another request (or node) created the room's meeting meanwhile
            raise conflict("the room already has a meeting") from None
        log.info("meeting created meeting=%s room=%s type=%s", row.id, row.room_id, meeting_type)
        await self._to_room(row.room_id, make_event("MEETING_CREATED", meetingId=row.id, roomId=row.room_id))
        return self.render(row)

    async def delete_meeting(self, principal: Principal, meeting_id: str) -> None:
        row = await self._meeting(meeting_id)
        await self._member(principal, row.room_id)
        async with self._lock(meeting_id):
            if await self.store.get_meeting(meeting_id) is None:
                return  # deleted by a call that held the lock before us
            live = self._live.get(meeting_id)
            if live is not None:
                await self._stop(row, live, delete_after=False)
            await self._delete(row)

    async def _delete(self, row: MeetingRow) -> None:
        await self.store.delete_meeting(row.id)
        # A call waiting on the old lock finds the row gone when it gets it.
        self._locks.pop(row.id, None)
        log.info("meeting deleted meeting=%s", row.id)
        await self._to_room(row.room_id, make_event("MEETING_DELETED", meetingId=row.id))

    # --- start and stop --------------------------------------------------------------------

    async def start_meeting(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        row = await self._meeting(meeting_id)
        await self._member(principal, row.room_id)
        async with self._lock(meeting_id):
            live = self._live.get(meeting_id)
            if live is None:
                row = await self._meeting(meeting_id)  # not deleted while we waited for the lock
                # What a stop could not clear (its store was down) goes now, before anyone waits.
                await self.store.clear_waiting(meeting_id)
                with media_errors():
                    await self.media.open_meeting(meeting_id)
                live = self._live[meeting_id] = LiveMeeting(row=row, started_at=self._clock())
                log.info("meeting started meeting=%s by=%s", meeting_id, principal.user_id)
            # Sent also when it was running already, as Carbonio does: clients re-sync on it.
            await self._to_room(
                row.room_id,
                make_event(
                    "MEETING_STARTED",
                    meetingId=meeting_id,
                    starterUser=principal.user_id,
                    startedAt=iso(live.started_at),
                ),
            )
            return self.render(row)

    async def stop_meeting(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        row = await self._meeting(meeting_id)
        await self._member(principal, row.room_id)
        async with self._lock(meeting_id):
            live = self._live.get(meeting_id)
            # A scheduled meeting past its expiration is deleted when it stops; one deleted
            # while we waited for the lock is not live: either way it answers as stopped.
            if live is not None:
                await self._stop(row, live)
            return self.render(row)

    async def _stop(self, row: MeetingRow, live: LiveMeeting, delete_after: bool = True) -> None:
        """Stop effects: queue cleared, recording finalised, LEFT per participant, media closed,
        STOPPED last (to room members and the users who were waiting).

        Once begun, a stop goes to its end whatever the media plane or the store says: a store
        that fails here is logged, and what it kept (the waiting queue) is cleared at the next
        start of the node or of the meeting."""
        stored = await self._stored_members(row.room_id)  # once for all the stop's events
        # The queue first (no one joins it during the stop: we hold the lock), so that no wait
        # on the store comes between the stop's events.
        try:
            waiting = [w.user_id for w in await self.store.waiting_of_meeting(row.id)]
            await self.store.clear_waiting(row.id)
        except StoreUnavailable as exc:
            log.error("waiting queue not cleared at stop meeting=%s error=%s", row.id, exc)
            waiting = list(live.waiting_names)
        if live.recording is not None:
            stamp = self._clock().strftime("%Y%m%dT%H%M%SZ")
            await self._finish_recording(
                row.id, live, self.recordings_dir / f"meeting_{row.id}" / f"{stamp}.mkv", None, must_store=False
            )
        for user_id in list(live.participants):
            await self._remove_participant(row, live, user_id, auto_stop=False, stored=stored)
        try:
            await self.media.close_meeting(row.id)
        except MediaError as exc:  # the meeting stops whatever the media plane says
            log.warning("media close failed meeting=%s error=%s", row.id, exc.message)
        self._live.pop(row.id, None)
        log.info("meeting stopped meeting=%s", row.id)
        await self._to_room(row.room_id, make_event("MEETING_STOPPED", meetingId=row.id), also=waiting, stored=stored)
        if delete_after and row.meeting_type == SCHEDULED and row.expiration is not None:
            if row.expiration <= self._clock():
                try:
                    await self._delete(row)
                except StoreUnavailable as exc:  # the expiry check deletes it later
                    log.warning("expired meeting not deleted at stop meeting=%s error=%s", row.id, exc)

    async def expire(self) -> int:
        """Delete inactive scheduled meetings whose expiration has passed; returns how many."""
        count = 0
        for row in await self.store.expired_meetings(self._clock()):
            if row.id in self._live:
                continue  # deleted when it stops
            async with self._lock(row.id):
                if row.id in self._live or await self.store.get_meeting(row.id) is None:
                    continue
                await self._delete(row)
                count += 1
        return count
