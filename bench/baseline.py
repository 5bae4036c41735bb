"""The naive baseline: the relay server a Python developer writes with aiohttp and aiortc alone.

Each publisher's video is decoded once (aiortc's receiver) and handed through aiortc's
`MediaRelay` to one re-encoding `RTCRtpSender` per subscriber. It speaks the subset of the
Carbonio Meeting API that the load generator uses (create, start, get, /events with queueId,
join, leave, PUT /media, /media/subscribe, /media/answer), with the same JWTs and the same
events, so the same synthetic clients drive it. No rights checks, no store, no audio (501).

    .venv/bin/python -m bench.baseline --port 10100 --secret S [--bitrate 1200000]

Choices a careful naive author would make, kept here: video relayed with `buffered=False`
(the buffered default grows without bound when encoding falls behind), VP8 only, the encoders
starting at the publisher's bitrate, ICE on 127.0.0.1 without a STUN server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

log = logging.getLogger("bench.baseline")


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _http(status: int, code: str, message: str) -> web.HTTPException:
    """A JSON error, as the real server answers."""
    exc = web.HTTPException(
        text=json.dumps({"error": code, "message": message}), content_type="application/json"
    )
    exc.set_status(status)
    return exc


@dataclass
class Member:
    user_id: str
    queue_id: str
    publisher: RTCPeerConnection | None = None
    receiver: RTCPeerConnection | None = None
    sending: dict[str, Any] = field(default_factory=dict)  # publisher user id -> transceiver


@dataclass
class Meeting:
    id: str
    room_id: str
    name: str
    active: bool = False
    members: dict[str, Member] = field(default_factory=dict)
    tracks: dict[str, Any] = field(default_factory=dict)  # publisher user id -> remote track


class Relay:
    """Server state: meetings, event sockets, and the single MediaRelay."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.meetings: dict[str, Meeting] = {}
        self.sockets: dict[str, tuple[str, web.WebSocketResponse]] = {}  # queue id -> (user, ws)
        self.relay = MediaRelay()

    def user(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else request.query.get("access_token", "")
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                options={"require": ["exp", "sub"]},
                leeway=30,
            )
        except jwt.InvalidTokenError as exc:
            raise _http(401, "unauthorized", str(exc)) from None
        return str(claims["sub"])

    def meeting(self, request: web.Request) -> Meeting:
        m = self.meetings.get(request.match_info["meetingId"])
        if m is None:
            raise _http(404, "not_found", "no such meeting")
        return m

    def member(self, request: web.Request) -> tuple[Meeting, Member]:
        m = self.meeting(request)
        p = m.members.get(self.user(request))
        if p is None:
            raise _http(404, "not_found", "not a participant")
        return m, p

    def send(self, user_id: str, event: dict[str, Any]) -> None:
        event = {"sentDate": _now(), **event}
        for owner, ws in list(self.sockets.values()):
            if owner == user_id and not ws.closed:
                asyncio.ensure_future(ws.send_json(event))

    def render(self, m: Meeting) -> dict[str, Any]:
        return {
            "id": m.id,
            "roomId": m.room_id,
            "name": m.name,
            "meetingType": "permanent",
            "active": m.active,
            "participants": [
                {
                    "userId": p.user_id,
                    "queueId": p.queue_id,
                    "userType": "registered",
                    "audioStreamEnabled": False,
                    "videoStreamEnabled": p.user_id in m.tracks,
                    "screenStreamEnabled": False,
                }
                for p in m.members.values()
            ],
        }

    async def leave(self, m: Meeting, user_id: str) -> None:
        p = m.members.pop(user_id, None)
        if p is None:
            return
        m.tracks.pop(user_id, None)
        for pc in (p.publisher, p.receiver):
            if pc is not None:
                await pc.close()
        for other in m.members.values():
            self.send(
                other.user_id,
                {"type": "MEETING_PARTICIPANT_LEFT", "meetingId": m.id, "userId": user_id},
            )

    # -- handlers ------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        self.user(request)
        body = await request.json()
        m = Meeting(
            str(uuid.uuid4()), str(body.get("roomId") or uuid.uuid4()), str(body.get("name", ""))
        )
        self.meetings[m.id] = m
        return web.json_response(self.render(m))

    async def get(self, request: web.Request) -> web.Response:
        self.user(request)
        return web.json_response(self.render(self.meeting(request)))

    async def public(self, request: web.Request) -> web.Response:
        raise _http(404, "not_found", "no scheduled meeting")

    async def start(self, request: web.Request) -> web.Response:
        self.user(request)
        m = self.meeting(request)
        m.active = True
        return web.json_response(self.render(m))

    async def join(self, request: web.Request) -> web.Response:
        user = self.user(request)
        m = self.meeting(request)
        queue_id = request.headers.get("queue-id", "")
        if self.sockets.get(queue_id, ("", None))[0] != user:
            raise _http(400, "bad_request", "queue-id is not an open socket of this user")
        if not m.active:
            raise _http(400, "bad_request", "meeting not started")
        m.members[user] = Member(user, queue_id)
        for other in m.members.values():
            self.send(
                other.user_id,
                {"type": "MEETING_PARTICIPANT_JOINED", "meetingId": m.id, "userId": user},
            )
        return web.json_response({"status": "ACCEPTED"})

    async def leave_handler(self, request: web.Request) -> web.Response:
        user = self.user(request)
        await self.leave(self.meeting(request), user)
        return web.Response(status=204)

    async def media(self, request: web.Request) -> web.Response:
        m, p = self.member(request)
        body = await request.json()
        if body.get("type") != "video" or not body.get("enabled") or not body.get("sdp"):
            raise _http(501, "not_implemented", "the baseline publishes enabled video only")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if p.publisher is not None:
            await p.publisher.close()
        p.publisher = pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                m.tracks[p.user_id] = track

        await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self.send(
            p.user_id,
            {
                "type": "MEETING_SDP_ANSWERED",
                "meetingId": m.id,
                "userId": p.user_id,
                "mediaType": "VIDEO",
                "sdp": pc.localDescription.sdp,
            },
        )
        for other in m.members.values():
            self.send(
                other.user_id,
                {
                    "type": "MEETING_MEDIA_STREAM_CHANGED",
                    "meetingId": m.id,
                    "userId": p.user_id,
                    "mediaType": "VIDEO",
                    "active": True,
                },
            )
        return web.Response(status=204)

    async def subscribe(self, request: web.Request) -> web.Response:
        m, p = self.member(request)
        body = await request.json()
        if p.receiver is None:
            p.receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc = p.receiver
        vp8 = [
            c
            for c in RTCRtpSender.getCapabilities("video").codecs
            if c.mimeType in ("video/VP8", "video/rtx")
        ]
        added = False
        for item in body.get("subscribe", []):
            source = m.tracks.get(item.get("userId"))
            if source is None or item["userId"] in p.sending:
                continue
            # The naive fan-out: one relayed copy of the decoded frames, one encoder per subscriber.
            sender = pc.addTrack(self.relay.subscribe(source, buffered=False))
            transceiver = next(t for t in pc.getTransceivers() if t.sender is sender)
            transceiver.setCodecPreferences(vp8)
            p.sending[item["userId"]] = transceiver
            added = True
        if added:
            await pc.setLocalDescription(await pc.createOffer())
            self.send(
                p.user_id,
                {
                    "type": "MEETING_SDP_OFFERED",
                    "meetingId": m.id,
                    "userId": p.user_id,
                    "mediaType": "VIDEO",
                    "sdp": pc.localDescription.sdp,
                },
            )
        return web.Response(status=204)

    async def answer(self, request: web.Request) -> web.Response:
        m, p = self.member(request)
        body = await request.json()
        if p.receiver is None:
            raise _http(400, "bad_request", "no offer pending")
        await p.receiver.setRemoteDescription(RTCSessionDescription(body["sdp"], "answer"))
        self.send(
            p.user_id,
            {
                "type": "MEETING_PARTICIPANT_SUBSCRIBED",
                "meetingId": m.id,
                "userId": p.user_id,
                "streams": [
                    {"type": "video", "userId": u, "mid": t.mid} for u, t in p.sending.items()
                ],
            },
        )
        return web.Response(status=204)

    async def audio(self, request: web.Request) -> web.Response:
        self.member(request)
        raise _http(501, "not_implemented", "the baseline relays video only")

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        user = self.user(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        queue_id = str(uuid.uuid4())
        self.sockets[queue_id] = (user, ws)
        await ws.send_json({"type": "websocketConnected", "queueId": queue_id})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and msg.data == '{"type":"ping"}':
                    await ws.send_json({"type": "pong"})
        finally:
            self.sockets.pop(queue_id, None)
            for m in list(self.meetings.values()):
                p = m.members.get(user)
                if p is not None and p.queue_id == queue_id:
                    await self.leave(m, user)
        return ws

    async def close_all(self, app: web.Application) -> None:
        for m in self.meetings.values():
            for user in list(m.members):
                try:
                    await asyncio.wait_for(self.leave(m, user), 5)
                except Exception:
                    pass


def create_app(secret: str) -> web.Application:
    relay = Relay(secret)
    app = web.Application()
    r = app.router
    m = "/meetings/{meetingId}"
    r.add_post("/meetings", relay.create)
    r.add_get("/public/meetings/{meetingId}", relay.public)
    r.add_get(m, relay.get)
    r.add_post(m + "/start", relay.start)
    r.add_post(m + "/join", relay.join)
    r.add_post(m + "/leave", relay.leave_handler)
    r.add_put(m + "/media", relay.media)
    r.add_put(m + "/media/subscribe", relay.subscribe)
    r.add_put(m + "/media/answer", relay.answer)
    r.add_put(m + "/audio/offer", relay.audio)
    r.add_put(m + "/audio", relay.audio)
    r.add_get("/events", relay.events)
    app.on_shutdown.append(relay.close_all)
    return app


def main(argv: list[str] | None = None) -> None:
    import aiortc.codecs.vpx

    from sfu.peer import IceSettings, configure_ice

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=10100)
    p.add_argument("--secret", required=True, help="HS256 secret of the clients' JWTs")
    p.add_argument("--bitrate", type=int, default=1_200_000, help="VP8 encoders' start bitrate")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    configure_ice(IceSettings())
    aiortc.codecs.vpx.DEFAULT_BITRATE = args.bitrate
    web.run_app(
        create_app(args.secret), host="127.0.0.1", port=args.port, print=None, access_log=None
    )


if __name__ == "__main__":
    main()
