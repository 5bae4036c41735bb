"""The demo web client at /demo, and a token endpoint for trying the node without an identity system.

Both exist only while `[demo] enabled` is true. `POST /demo/token` mints a token for any user id
and any room grants: it is for trying the node on one's own machine and must be off in
production (`[demo] enabled = false`). It answers loopback clients only, unless
`[demo] remote_tokens` is set; a request that came through a proxy (a Forwarded or
X-Forwarded-For header) or from another site (an Origin other than the page's) is refused.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import uuid

from aiohttp import web

from .auth import ROLES, canonical_uuid
from .errors import ApiError
from .keys import CONFIG, TOKENS
from .responses import json_response
from .validation import parse_json_object

# name -> content type; nothing else under /demo/ is served.
_FILES = {
    "index.html": "text/html",
    "demo.js": "text/javascript",
    "demo.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
_CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
MAX_TTL_SECONDS = 24 * 3600


def _static(name: str) -> bytes:
    return importlib.resources.files("control_api").joinpath("static", name).read_bytes()


async def _index(request: web.Request) -> web.Response:
    return await _file(request, "index.html")


async def _named_file(request: web.Request) -> web.Response:
    return await _file(request, request.match_info["name"])


async def _file(request: web.Request, name: str) -> web.Response:
    if name not in _FILES:
        raise ApiError(404, "not_found", "no such demo file")
    response = web.Response(body=_static(name), content_type=_FILES[name], charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if name == "index.html":
        response.headers["Content-Security-Policy"] = _CSP
        # Camera, microphone and screen for this origin only.
        response.headers["Permissions-Policy"] = (
            "camera=(self), microphone=(self), display-capture=(self)"
        )
    return response


def _from_loopback(request: web.Request) -> bool:
    if "Forwarded" in request.headers or "X-Forwarded-For" in request.headers:
        return False
    try:
        address = ipaddress.ip_address((request.remote or "").split("%")[0])
    except ValueError:
        return False  # a unix socket or an unknown peer
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser's cross-site request (curl, tests)
    return origin in (f"http://{request.host}", f"https://{request.host}")


async def _token(request: web.Request) -> web.Response:
    """Mint a token: `{userId?, name?, guest?, rooms?: {roomId: owner|member}, ttlSeconds?}`."""
    config = request.app[CONFIG]
    if not _same_origin(request):
        raise ApiError(403, "forbidden", "demo tokens are minted for the demo page's origin only")
    if not config.demo.remote_tokens and not _from_loopback(request):
        raise ApiError(
            403, "forbidden", "demo tokens are minted for loopback clients only ([demo] remote_tokens)"
        )
    raw = await request.read()
    body = parse_json_object(raw) if raw.strip() else {}
    user_id = body.get("userId") or str(uuid.uuid4())
    user_id = canonical_uuid(user_id)
    if user_id is None:
        raise ApiError(400, "bad_request", "userId must be a UUID")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 128):
        raise ApiError(400, "bad_request", "name must be a string of 1..128 characters")
    guest = body.get("guest", False)
    if not isinstance(guest, bool):
        raise ApiError(400, "bad_request", "guest must be a boolean")
    rooms = body.get("rooms") or {}
    if not isinstance(rooms, dict):
        raise ApiError(400, "bad_request", "rooms must map room ids to owner or member")
    grants: dict[str, str] = {}
    for room_id, role in rooms.items():
        rid = canonical_uuid(room_id)
        if rid is None or role not in ROLES:
            raise ApiError(400, "bad_request", "rooms must map room UUIDs to owner or member")
        grants[rid] = role
    ttl = body.get("ttlSeconds", config.auth.default_ttl_seconds)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_SECONDS:
        raise ApiError(400, "bad_request", f"ttlSeconds must be an integer in 1..{MAX_TTL_SECONDS}")
    token = request.app[TOKENS].mint(
        user_id, name=name, guest=guest, rooms=grants, ttl_seconds=ttl
    )
    return json_response({"token": token, "userId": user_id, "expiresIn": ttl})


def add_demo_routes(app: web.Application) -> None:
    """Serve the demo page and its token endpoint (called only when `[demo] enabled`)."""
    app.router.add_get("/demo", _index)
    app.router.add_get("/demo/", _index)
    app.router.add_post("/demo/token", _token)
    app.router.add_get("/demo/{name}", _named_file)
