"""Application factory: builds the aiohttp app from a Config, with its middlewares and tasks."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import WSCloseCode, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sfu.api import (
    MediaError,
    MediaListener,
    MediaService,
    RecordingResult,
    StreamKind,
    StreamRef,
    SubscribedStream,
)
from sfu.metrics import MediaCollector, MediaStats, measure_loop_lag

from .auth import AuthError, TokenAuthority, load_or_create_secret
from .config import Config
from .domain import MeetingService
from .errors import ApiError
from .events import EventHub
from .handlers import add_routes
from .keys import (
    CONFIG,
    DOMAIN,
    HUB,
    MEDIA,
    MEDIA_STATS,
    METRICS,
    PRINCIPAL,
    STORE,
    TOKENS,
    WEBSOCKETS,
)
from .metrics import ControlMetrics
from .store import Store

log = logging.getLogger("meeting_sfu.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response(
        {"error": code, "message": message}, status=status, headers=headers or None
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as {"error", "message"}: ours, aiohttp's (404, 405, 413) and bugs."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = exc.reason if exc.status != 413 else "request body too large"
        return error_response(exc.status, _REASONS.get(exc.status, "error"), message, headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error method=%s path=%s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "Authorization must be 'Bearer <token>'")
        return token.strip()
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication runs first (401 before any 400): /meetings* and /events need a token."""
    path = request.path
    if path == "/meetings" or path.startswith("/meetings/") or path == "/events":
        token = _bearer(request) or request.cookies.get("ZM_AUTH_TOKEN")
        if token is None and path == "/events":
            token = request.query.get("access_token")
        if not token:
            raise ApiError(401, "unauthorized", "a bearer token or ZM_AUTH_TOKEN cookie is required")
        try:
            request[PRINCIPAL] = request.app[TOKENS].verify(token)
        except AuthError as exc:
            raise ApiError(401, "unauthorized", str(exc)) from None
    return await handler(request)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    started = time.perf_counter()
    route = "unmatched"
    resource = request.match_info.route.resource
    if resource is not None:
        route = resource.canonical
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if route != "/events":
            metrics.http_latency.labels(route).observe(time.perf_counter() - started)
        metrics.http_requests.labels(route, request.method, str(status)).inc()


def cors_middleware(origins: tuple[str, ...]) -> Callable:
    allowed = set(origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or ("*" not in allowed and origin not in allowed):
            return await handler(request)
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
            headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, queue-id"
            headers["Access-Control-Max-Age"] = "600"
            return web.Response(status=204, headers=headers)
        response = await handler(request)
        response.headers.update(headers)
        return response

    return cors


class UnavailableMedia:
    """Stands in when the media plane cannot be loaded: media calls answer 501."""

    def set_listener(self, listener: MediaListener) -> None:
        pass

    async def open_meeting(self, meeting_id: str) -> None:
        pass

    async def close_meeting(self, meeting_id: str) -> None:
        pass

    async def remove_participant(self, meeting_id: str, user_id: str) -> None:
        pass

    def _unavailable(self) -> MediaError:
        return MediaError(501, "not_implemented", "the media plane is not available")

    async def publish(self, meeting_id: str, user_id: str, kind: StreamKind, offer_sdp: str) -> str:
        raise self._unavailable()

    async def unpublish(self, meeting_id: str, user_id: str, kind: StreamKind) -> None:
        pass

    async def update_subscriptions(
        self, meeting_id: str, user_id: str, subscribe: list[StreamRef], unsubscribe: list[StreamRef]
    ) -> str | None:
        raise self._unavailable()

    async def answer_subscriber(self, meeting_id: str, user_id: str, answer_sdp: str) -> list[SubscribedStream]:
        raise self._unavailable()

    async def audio_offer(self, meeting_id: str, user_id: str, offer_sdp: str) -> str:
        raise self._unavailable()

    async def set_audio_enabled(self, meeting_id: str, user_id: str, enabled: bool) -> None:
        pass

    async def start_recording(self, meeting_id: str, work_path: str) -> None:
        raise self._unavailable()

    async def stop_recording(self, meeting_id: str, final_path: str) -> RecordingResult | None:
        return None

    async def close(self) -> None:
        pass


def default_media(config: Config) -> MediaService:
    """The in-process media plane, configured from [media] and [recording]."""
    from sfu.peer import IceSettings, bind_ice, configure_ice

    configure_ice(
        IceSettings(
            addresses=config.media.ice_addresses,
            public_ip=config.media.public_ip or None,
            udp_port=config.media.udp_port,
        )
    )
    bind_ice()  # a port in use stops start-up here, with one line naming [media] udp_port
    try:
        from sfu.service import LocalMediaService
    except ImportError as exc:
        log.warning("media plane unavailable: %s", exc)
        return UnavailableMedia()
    from_config = getattr(LocalMediaService, "from_config", None)
    if from_config is not None:
        return from_config(config)
    return LocalMediaService()


async def _openapi(request: web.Request) -> web.Response:
    text = importlib.resources.files("control_api").joinpath("openapi.json").read_text()
    return web.Response(text=text, content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    if config.metrics.token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.metrics.token}".encode()):
            raise ApiError(401, "unauthorized", "a metrics token is required")
    registry = request.app[METRICS].registry
    body = generate_latest(registry)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(config: Config, media: MediaService | None = None) -> web.Application:
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[
            metrics_middleware,
            errors_middleware,
            cors_middleware(config.server.cors_origins),
            auth_middleware,
        ],
        handler_args={"max_field_size": 16 * 1024},
    )
    data_dir = config.data_path
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = load_or_create_secret(config.auth.jwt_secret, data_dir)
    store = Store(data_dir / "meeting-sfu.sqlite3")
    hub = EventHub(store, config.meetings.max_events_queue)
    metrics = ControlMetrics()
    hub.on_sent = metrics.events_sent.inc
    media = media if media is not None else default_media(config)
    domain = MeetingService(
        store,
        hub,
        media,
        recordings_dir=config.recording_path,
        work_dir=data_dir / "recordings-in-progress",
    )
    # The media plane counts in plain ints; its collector reads them on scrape.
    media_stats = getattr(media, "stats", None)
    if not isinstance(media_stats, MediaStats):
        media_stats = MediaStats()
    metrics.registry.register(MediaCollector(media_stats))
    app[MEDIA_STATS] = media_stats
    metrics.bind(
        meetings_active=lambda: domain.active_meetings,
        participants=lambda: domain.participant_count,
        websocket_sessions=lambda: hub.count,
        waiting_users=store.count_waiting,
    )
    app[CONFIG] = config
    app[STORE] = store
    app[HUB] = hub
    app[MEDIA] = media
    app[DOMAIN] = domain
    app[TOKENS] = TokenAuthority(secret, config.auth.leeway_seconds)
    app[METRICS] = metrics
    app[WEBSOCKETS] = set()

    add_routes(app)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/health", _health)
    if config.metrics.enabled:
        app.router.add_get("/metrics", _metrics)
    if config.demo.enabled:
        with contextlib.suppress(ImportError):
            from .demo import add_demo_routes

            add_demo_routes(app)

    app.cleanup_ctx.append(_expiry_task)
    app.cleanup_ctx.append(_loop_lag_task)
    app.on_shutdown.append(_close_websockets)
    app.on_cleanup.append(_close_state)
    return app


async def _expiry_task(app: web.Application) -> AsyncIterator[None]:
    interval = max(0.05, app[CONFIG].meetings.expiry_check_seconds)
    domain = app[DOMAIN]

    async def loop() -> None:
        while True:
            try:
                await domain.expire()
            except Exception:
                log.exception("expiry check failed")
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _loop_lag_task(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(measure_loop_lag(app[MEDIA_STATS]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_websockets(app: web.Application) -> None:
    for ws in list(app[WEBSOCKETS]):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


async def _close_state(app: web.Application) -> None:
    with contextlib.suppress(Exception):
        await app[MEDIA].close()
    app[STORE].close()


__all__ = ["create_app", "default_media", "error_response"]
