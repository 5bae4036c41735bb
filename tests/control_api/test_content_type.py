"""Every JSON response says `Content-Type: application/json` exactly, with no charset parameter
(DESIGN section 10): the Carbonio web client parses nothing else as JSON. Checked on every route
the application has (prefixed ones included), for successes and errors alike."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import new_id, start_server

from .support import create_meeting, started_meeting, user


@pytest.fixture
async def prefixed(tmp_path):
    handle = await start_server(tmp_path, server={"base_path": "/services/chats"})
    try:
        yield handle
    finally:
        await handle.stop()


async def raw_call(server, method: str, path: str, token: str | None, body: object = None, headers=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    async with server.http.request(method, server.url + path, json=body, headers=h) as r:
        return r.status, r.headers.get("Content-Type"), await r.read()


def check(status: int, content_type: str | None, raw: bytes, where: str) -> None:
    if not raw:
        assert status in (101, 204), (where, status)
        return
    if content_type and content_type.startswith("text/plain"):
        assert where.endswith("/metrics"), (where, status, content_type)  # Prometheus' format
        return
    if status == 200 and " /demo" in where and not where.endswith("/token"):
        return  # the demo page's own files: HTML, script, style, icon
    json.loads(raw)
    assert content_type == "application/json", (where, status, content_type)


async def test_every_route_answers_exactly_application_json(prefixed):
    server = prefixed
    room = new_id()
    olga = await user(server, {room: "owner"})
    meeting = await started_meeting(olga, room, "scheduled")
    assert (await olga.join(meeting["id"]))[0] == 200
    values = {"meetingId": meeting["id"], "userId": new_id(), "name": "demo.js"}
    checked = 0
    for route in server.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        template = info.get("formatter") or info.get("path")
        if template is None or route.method == "HEAD":
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)
        method = "GET" if route.method == "*" else route.method
        for token, body in ((olga.token, {}), (None, None), (olga.token, [1])):
            status, content_type, raw = await raw_call(server, method, path, token, body)
            check(status, content_type, raw, f"{method} {path}")
            checked += 1
    assert checked > 3 * 40  # both prefixes' routes were walked


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/nowhere"),  # 404
        ("PATCH", "/meetings"),  # 405
        ("GET", "/services/chats/nowhere"),
        ("GET", "/meetings"),  # 401 without a token
        ("GET", "/services/chats/openapi.json"),
        ("GET", "/health"),
    ],
)
async def test_errors_and_documents_are_exactly_application_json(prefixed, method, path):
    status, content_type, raw = await raw_call(prefixed, method, path, None)
    json.loads(raw)
    assert content_type == "application/json", (status, content_type)


async def test_create_meeting_and_join_accepted_are_exactly_application_json(server):
    """What the Carbonio client reads: a created meeting and the join's ACCEPTED."""
    olga = await user(server)
    meeting = await create_meeting(olga, None)
    status, content_type, raw = await raw_call(server, "POST", f"/meetings/{meeting['id']}/start", olga.token)
    assert (status, content_type) == (200, "application/json")
    status, content_type, raw = await raw_call(
        server,
        "POST",
        f"/meetings/{meeting['id']}/join",
        olga.token,
        {"audioStreamEnabled": False, "videoStreamEnabled": False},
        headers={"queue-id": olga.ws.queue_id},
    )
    assert (status, content_type, json.loads(raw)) == (200, "application/json", {"status": "ACCEPTED"})
