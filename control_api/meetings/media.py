"""A participant's media: publishing and unpublishing streams, subscriptions and their SDP
answers, audio, and the media plane's own events (a stream that starts or ends, talking, a
worker that died with its meetings: MeetingLost)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from sfu import api
from sfu.api import (
    MediaError,
    MediaEvent,
    MeetingLost,
    PeerClosed,
    ProducerStateChanged,
    StreamRef,
    SubscriberOffer,
    TalkingChanged,
)

from ..auth import Principal
from ..errors import ApiError, bad_request, forbidden
from ..events import make_event
from .state import LiveMeeting, MeetingState, Participant

log = logging.getLogger("meeting_sfu.domain")

# The HTTP status of each media error code (sfu knows no HTTP; DESIGN §9.1).
MEDIA_STATUS = {
    api.BAD_SDP: 400,
    api.BAD_KIND: 400,
    api.UNSUPPORTED_CODEC: 400,
    api.NO_OFFER: 409,
    api.CLOSED: 409,
    api.GONE: 409,
    api.UNAVAILABLE: 503,
    api.WORKER_LOST: 503,
    api.TIMEOUT: 503,
    api.INTERNAL: 500,
}


def media_status(exc: MediaError) -> int:
    return MEDIA_STATUS.get(exc.code, 503)


@contextlib.contextmanager
def media_errors() -> Iterator[None]:
    """A media-plane refusal becomes the API error with the status its code maps to."""
    try:
        yield
    except MediaError as exc:
        status = media_status(exc)
        code = "internal_error" if status == 500 else ("media_unavailable" if status == 503 else exc.code)
        raise ApiError(status, code, exc.message) from None


class Media(MeetingState):
    async def _media_target(self, principal: Principal, meeting_id: str) -> None:
        """Existence, rights, then participation: checked before the lock is waited for."""
        row = await self._meeting(meeting_id)
        await self._member(principal, row.room_id)
        self._participant(meeting_id, principal.user_id)

    async def update_media(
        self, principal: Principal, meeting_id: str, kind: str, enabled: bool, sdp: str | None
    ) -> None:
        if enabled and sdp is None:  # syntax before existence (DESIGN section 8)
            raise bad_request("sdp is required to enable a stream")
        await self._media_target(principal, meeting_id)
        async with self._lock(meeting_id):
            live, p = self._participant(meeting_id, principal.user_id)  # he may have left meanwhile
            if enabled:
                with media_errors():
                    answer = await self.media.publish(meeting_id, p.user_id, kind, sdp)  # type: ignore[arg-type]
                setattr(p, kind, True)
                self.hub.to_users(
                    [p.user_id],
                    make_event(
                        "MEETING_SDP_ANSWERED",
                        meetingId=meeting_id,
                        userId=p.user_id,
                        mediaType=kind.upper(),
                        sdp=answer,
                    ),
                )
                return
            if not getattr(p, kind):
                return
            setattr(p, kind, False)
            self._to_participants(
                live,
                make_event(
                    "MEETING_MEDIA_STREAM_CHANGED",
                    meetingId=meeting_id,
                    userId=p.user_id,
                    mediaType=kind.upper(),
                    active=False,
                ),
            )
            try:
                await self.media.unpublish(meeting_id, p.user_id, kind)  # type: ignore[arg-type]
            except MediaError as exc:
                log.warning("unpublish failed meeting=%s error=%s", meeting_id, exc.message)

    async def update_subscriptions(
        self,
        principal: Principal,
        meeting_id: str,
        subscribe: list[tuple[str, str, str | None]],
        unsubscribe: list[tuple[str, str]],
    ) -> None:
        """Items are (userId, type[, quality]); quality caps the simulcast layer (DESIGN §6.1).
        Lists of plain values, so that the call can be relayed as JSON."""
        # Syntax before existence (DESIGN section 8).
        if not subscribe and not unsubscribe:
            raise bad_request("subscribe and unsubscribe are both empty")
        if any(uid == principal.user_id for uid, _, _ in subscribe):
            raise bad_request("a user cannot subscribe to his own streams")
        await self._media_target(principal, meeting_id)
        async with self._lock(meeting_id):
            live, p = self._participant(meeting_id, principal.user_id)
            # Streams of users who are not (or no longer) participants are skipped: the client
            # may race a leave. The media plane skips streams that are not published likewise.
            subs = [StreamRef(u, k, q) for u, k, q in subscribe if u in live.participants]  # type: ignore[arg-type]
            unsubs = [StreamRef(u, k) for u, k in unsubscribe]  # type: ignore[arg-type]
            with media_errors():
                offer = await self.media.update_subscriptions(meeting_id, p.user_id, subs, unsubs)
            if offer is not None:
                self.hub.to_users(
                    [p.user_id],
                    make_event(
                        "MEETING_SDP_OFFERED",
                        meetingId=meeting_id,
                        userId=p.user_id,
                        mediaType="VIDEO",
                        sdp=offer,
                    ),
                )

    async def answer_media(self, principal: Principal, meeting_id: str, sdp: str) -> None:
        await self._media_target(principal, meeting_id)
        async with self._lock(meeting_id):
            _, p = self._participant(meeting_id, principal.user_id)
            with media_errors():
                streams = await self.media.answer_subscriber(meeting_id, p.user_id, sdp)
            self.hub.to_users(
                [p.user_id],
                make_event(
                    "MEETING_PARTICIPANT_SUBSCRIBED",
                    meetingId=meeting_id,
                    userId=p.user_id,
                    streams=[{"type": s.kind, "userId": s.user_id, "mid": s.mid} for s in streams],
                ),
            )

    async def audio_offer(self, principal: Principal, meeting_id: str, sdp: str) -> None:
        await self._media_target(principal, meeting_id)
        async with self._lock(meeting_id):
            _, p = self._participant(meeting_id, principal.user_id)
            with media_errors():
                answer = await self.media.audio_offer(meeting_id, p.user_id, sdp)
            self.hub.to_users(
                [p.user_id],
                make_event("MEETING_AUDIO_ANSWERED", meetingId=meeting_id, userId=p.user_id, sdp=answer),
            )

    async def update_audio(
        self, principal: Principal, meeting_id: str, enabled: bool, user_to_moderate: str | None
    ) -> None:
        row = await self._meeting(meeting_id)
        role = await self._member(principal, row.room_id)
        target = user_to_moderate or principal.user_id
        self._participant(meeting_id, target)
        moderated = target != principal.user_id
        if moderated:
            if role != "owner":
                raise forbidden("only a moderator may mute another participant")
            if enabled:
                raise bad_request("a moderator may mute, not unmute, another participant")
        async with self._lock(meeting_id):
            live, p = self._participant(meeting_id, target)
            if p.audio == enabled:
                return
            with media_errors():
                await self.media.set_audio_enabled(meeting_id, target, enabled)
            p.audio = enabled
            self._to_participants(
                live,
                make_event(
                    "MEETING_AUDIO_STREAM_CHANGED",
                    meetingId=meeting_id,
                    userId=target,
                    moderatorId=principal.user_id if moderated else None,
                    active=enabled,
                ),
            )

    # --- the media plane's events ----------------------------------------------------------

    async def run_media_events(self) -> None:
        """Read the media plane's events until cancelled (a task of the app)."""
        while True:
            try:
                async for event in self.media.events():
                    self.on_media_event(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # a defect must not end the reading for good
                log.exception("reading media events failed")
            await asyncio.sleep(0.1)

    def on_media_event(self, event: MediaEvent) -> None:
        """Media-plane events, turned into websocket events (never raises)."""
        try:
            if isinstance(event, MeetingLost):
                task = asyncio.ensure_future(self._meeting_lost(event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            self._on_media_event(event)
        except Exception:  # a bad event must not stop the events loop
            log.exception("media event failed event=%r", event)

    async def _meeting_lost(self, event: MeetingLost) -> None:
        """The worker holding the meeting died: the meeting stops as by a stop (DESIGN §9.1)."""
        try:
            async with self._lock(event.meeting_id):
                live = self._live.get(event.meeting_id)
                if live is None:
                    return
                live.media_lost = True
                log.error("meeting lost its media meeting=%s reason=%s", event.meeting_id, event.reason)
                await self._stop(live.row, live)
        except Exception:
            log.exception("stopping a meeting that lost its media failed meeting=%s", event.meeting_id)

    def _on_media_event(self, event: MediaEvent) -> None:
        live = self._live.get(event.meeting_id)
        if live is None or isinstance(event, MeetingLost):
            return
        p = live.participants.get(event.user_id)
        if isinstance(event, ProducerStateChanged):
            if p is None:
                return
            self._producer_changed(live, p, event)
        elif isinstance(event, SubscriberOffer):
            if p is None:
                return
            self.hub.to_users(
                [event.user_id],
                make_event(
                    "MEETING_SDP_OFFERED",
                    meetingId=event.meeting_id,
                    userId=event.user_id,
                    mediaType="VIDEO",
                    sdp=event.sdp,
                ),
            )
        elif isinstance(event, TalkingChanged):
            if p is None:
                return
            self._to_participants(
                live,
                make_event(
                    "MEETING_PARTICIPANT_TALKING",
                    meetingId=event.meeting_id,
                    userId=event.user_id,
                    isTalking=event.is_talking,
                ),
            )
        elif isinstance(event, PeerClosed):
            log.info("peer closed meeting=%s user=%s peer=%s", event.meeting_id, event.user_id, event.peer)

    def _producer_changed(self, live: LiveMeeting, p: Participant, event: ProducerStateChanged) -> None:
        if event.active:
            if not getattr(p, event.kind):
                return  # a late packet of a stream already disabled
        elif not getattr(p, event.kind):
            return  # already announced by the control plane
        setattr(p, event.kind, event.active)
        self._to_participants(
            live,
            make_event(
                "MEETING_MEDIA_STREAM_CHANGED",
                meetingId=event.meeting_id,
                userId=event.user_id,
                mediaType=event.kind.upper(),
                active=event.active,
            ),
        )
