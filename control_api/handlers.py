"""HTTP handlers of the 18 operations and the /events websocket: parse, call the domain, render."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from aiohttp import WSMsgType, web

from sfu.api import MediaError
from sfu.peer import parse_session_description

from .auth import Principal
from .errors import ApiError, bad_request
from .keys import DOMAIN, HUB, METRICS, PRINCIPAL, WEBSOCKETS
from .meetings import ACCEPTED, REJECTED, MeetingService, media_status
from .responses import json_response
from .validation import Body, parse_json_object, path_uuid, safe_path_component

log = logging.getLogger("meeting_sfu.http")

MEETING_TYPES = ("permanent", "scheduled")
STREAM_TYPES = ("video", "screen")
QUALITIES = ("low", "medium", "high")  # a subscribe item's simulcast cap (DESIGN §6.1)
MAX_SDP = 256 * 1024


def _domain(request: web.Request) -> MeetingService:
    return request.app[DOMAIN]


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _meeting_id(request: web.Request) -> str:
    return path_uuid(request.match_info["meetingId"], "meetingId")


async def _body(request: web.Request) -> Body:
    return Body(parse_json_object(await request.read()))


def _json(data: object, status: int = 200) -> web.Response:
    return json_response(data, status=status)


def _sdp(sdp: str | None, type_: str) -> str | None:
    """SDP that cannot be parsed is a 400 before existence, rights or state are looked at
    (DESIGN section 8): an unparseable answer with no offer pending is a 400, not a 409."""
    if sdp is not None:
        try:
            parse_session_description(sdp, type_)
        except MediaError as exc:
            raise ApiError(media_status(exc), exc.code, exc.message) from None
    return sdp


def _no_content() -> web.Response:
    return web.Response(status=204)


async def get_public_meeting(request: web.Request) -> web.Response:
    return _json(await _domain(request).public_meeting(_meeting_id(request)))


async def list_meetings(request: web.Request) -> web.Response:
    return _json(await _domain(request).list_meetings(_principal(request)))


async def create_meeting(request: web.Request) -> web.Response:
    body = await _body(request)
    name = body.string("name", min_len=1, max_len=256)
    room_id = body.uuid("roomId", required=False)
    meeting_type = body.enum("meetingType", MEETING_TYPES)
    expiration = body.datetime("expiration", required=False)
    meeting = await _domain(request).create_meeting(
        _principal(request), name, meeting_type, room_id, expiration  # type: ignore[arg-type]
    )
    return _json(meeting)


async def get_meeting(request: web.Request) -> web.Response:
    return _json(await _domain(request).get_meeting(_principal(request), _meeting_id(request)))


async def delete_meeting(request: web.Request) -> web.Response:
    await _domain(request).delete_meeting(_principal(request), _meeting_id(request))
    return _no_content()


async def start_meeting(request: web.Request) -> web.Response:
    return _json(await _domain(request).start_meeting(_principal(request), _meeting_id(request)))


async def stop_meeting(request: web.Request) -> web.Response:
    return _json(await _domain(request).stop_meeting(_principal(request), _meeting_id(request)))


async def join_meeting(request: web.Request) -> web.Response:
    meeting_id = _meeting_id(request)
    body = await _body(request)
    body.boolean("audioStreamEnabled")
    body.boolean("videoStreamEnabled")
    raw_queue = request.headers.get("queue-id")
    if raw_queue is None:
        raise bad_request("the queue-id header is required", "missing_queue_id")
    queue_id = path_uuid(raw_queue.strip(), "queue-id")
    status = await _domain(request).join(_principal(request), meeting_id, queue_id)
    return _json({"status": status})


async def leave_meeting(request: web.Request) -> web.Response:
    await _domain(request).leave(_principal(request), _meeting_id(request))
    return _no_content()


async def get_queue(request: web.Request) -> web.Response:
    return _json(await _domain(request).get_queue(_principal(request), _meeting_id(request)))


async def update_queued_user(request: web.Request) -> web.Response:
    meeting_id = _meeting_id(request)
    user_id = path_uuid(request.match_info["userId"], "userId")
    body = await _body(request)
    status = body.enum("status", (ACCEPTED, REJECTED))
    await _domain(request).update_queued_user(_principal(request), meeting_id, user_id, status)  # type: ignore[arg-type]
    return _no_content()


async def update_media(request: web.Request) -> web.Response:
    meeting_id = _meeting_id(request)
    body = await _body(request)
    kind = body.enum("type", STREAM_TYPES)
    enabled = body.boolean("enabled")
    sdp = body.string("sdp", required=False, max_len=MAX_SDP)
    if enabled:
        _sdp(sdp, "offer")
    await _domain(request).update_media(_principal(request), meeting_id, kind, enabled, sdp)  # type: ignore[arg-type]
    return _no_content()


async def answer_media(request: web.Request) -> web.Response:
    meeting_id = _meeting_id(request)
    sdp = _sdp((await _body(request)).string("sdp", max_len=MAX_SDP), "answer")
    await _domain(request).answer_media(_principal(request), meeting_id, sdp)  # type: ignore[arg-type]
    return _no_content()


def _streams(items: list[Body]) -> list[tuple[str, str, str | None]]:
    """(userId, type, quality): the optional `quality` is a subscribe item's simulcast cap
    (DESIGN §6.1 extension)."""
    return [
        (s.uuid("userId"), s.enum("type", STREAM_TYPES), s.enum("quality", QUALITIES, required=False))
        for s in items
    ]  # type: ignore[misc]


async def update_subscriptions(request: web.Request) -> web.Response:
    meeting_id = _meeting_id(request)
    body = await _body(request)
    subscribe = _streams(body.objects("subscribe"))  # type: ignore[arg-type]
    unsubscribe = [(u, k) for u, k, _ in _streams(body.objects("unsubscribe"))]  # type: ignore[arg-type]
    await _domain(request).update_subscriptions(_principal(request), meeting_id, subscribe, unsubscribe)
    return _no_content()


async def update_audio(request: web.Request) -> web.Response:
    meeting_id = _meeting_id(request)
    body = await _body(request)
    enabled = body.boolean("enabled")
    target = body.uuid("userToModerate", required=False)
    await _domain(request).update_audio(_principal(request), meeting_id, enabled, target)  # type: ignore[arg-type]
    return _no_content()


async def audio_offer(request: web.Request) -> web.Response:
    meeting_id = _meeting_id(request)
    sdp = _sdp((await _body(request)).string("sdp", max_len=MAX_SDP), "offer")
    await _domain(request).audio_offer(_principal(request), meeting_id, sdp)  # type: ignore[arg-type]
    return _no_content()


async def start_recording(request: web.Request) -> web.Response:
    await _domain(request).start_recording(_principal(request), _meeting_id(request))
    return _no_content()


async def stop_recording(request: web.Request) -> web.Response:
    meeting_id = _meeting_id(request)
    body = await _body(request)
    name = safe_path_component(body.string("name"), "name")  # type: ignore[arg-type]
    folder_id = safe_path_component(body.string("folderId"), "folderId")  # type: ignore[arg-type]
    await _domain(request).stop_recording(_principal(request), meeting_id, name, folder_id)
    return _no_content()


async def events(request: web.Request) -> web.StreamResponse:
    """The /events websocket: websocketConnected with the queueId, ping/pong, close = leave."""
    principal = _principal(request)
    hub = request.app[HUB]
    ws = web.WebSocketResponse(max_msg_size=64 * 1024, heartbeat=None)
    await ws.prepare(request)
    queue_id = str(uuid.uuid4())
    # Known to the whole cluster before its id is given out: a join through any node finds it.
    # Opened here only then, and greeted in the same step: no event reaches the socket before
    # websocketConnected (in a cluster, room events go on while the directory write waits).
    await _domain(request).socket_opened(queue_id, principal.user_id)
    session = hub.open(queue_id, principal.user_id, principal.grants)
    metrics = request.app[METRICS]

    async def cut() -> None:
        # Bounded: a client that reads nothing would hold the close (and the socket) for ever.
        try:
            await asyncio.wait_for(ws.close(code=1008, message=b"event queue overflow"), 5)
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()  # close() would wait for the unsent bytes to drain

    def overflow() -> None:
        metrics.websocket_overflows.inc()
        log.warning("events socket too slow, closing queue=%s", queue_id)
        hub.close(session)
        # Leave at once: the close handshake with a client that does not read can take long.
        asyncio.ensure_future(_domain(request).socket_closed(queue_id))
        asyncio.ensure_future(cut())

    session.on_overflow = overflow
    session.push({"type": "websocketConnected", "queueId": queue_id})
    request.app[WEBSOCKETS].add(ws)
    log.info("events socket opened user=%s queue=%s", principal.user_id, queue_id)

    async def pump() -> None:
        while True:
            message = await session.outbox.get()
            await ws.send_str(message)

    sender = asyncio.create_task(pump())
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("type") == "ping":
                session.push({"type": "pong"})
    finally:
        hub.close(session)
        request.app[WEBSOCKETS].discard(ws)
        sender.cancel()
        log.info("events socket closed user=%s queue=%s", principal.user_id, queue_id)
        await asyncio.shield(_domain(request).socket_closed(queue_id))
    return ws


def add_routes(app: web.Application, base_path: str = "") -> None:
    """The 18 operations and /events, at their paths and, with a base path, under it too."""
    r = app.router
    for prefix in ("", base_path) if base_path else ("",):
        m = prefix + "/meetings/{meetingId}"
        r.add_get(prefix + "/public/meetings/{meetingId}", get_public_meeting)
        r.add_get(prefix + "/meetings", list_meetings)
        r.add_post(prefix + "/meetings", create_meeting)
        r.add_get(m, get_meeting)
        r.add_delete(m, delete_meeting)
        r.add_post(m + "/start", start_meeting)
        r.add_post(m + "/stop", stop_meeting)
        r.add_post(m + "/join", join_meeting)
        r.add_post(m + "/leave", leave_meeting)
        r.add_get(m + "/queue", get_queue)
        r.add_post(m + "/queue/{userId}", update_queued_user)
        r.add_put(m + "/media", update_media)
        r.add_put(m + "/media/answer", answer_media)
        r.add_put(m + "/media/subscribe", update_subscriptions)
        r.add_put(m + "/audio", update_audio)
        r.add_put(m + "/audio/offer", audio_offer)
        r.add_post(m + "/startRecording", start_recording)
        r.add_post(m + "/stopRecording", stop_recording)
        r.add_get(prefix + "/events", events)
