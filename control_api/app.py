"""Application factory: builds the aiohttp app from a Config, with its middlewares and tasks."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import WSCloseCode, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sfu.api import MediaError, MediaService, StatsReport
from sfu.metrics import MediaCollector, MediaStats, measure_loop_lag

from .auth import AuthError, TokenAuthority, load_or_create_secret
from .cluster.hub import ClusterHub
from .cluster.node import ClusterNode
from .config import Config
from .errors import ApiError
from .events import EventHub
from .handlers import add_routes
from .keys import (
    CONFIG,
    DOMAIN,
    HUB,
    MEDIA,
    MEDIA_REPORT,
    MEDIA_STATS,
    METRICS,
    PRINCIPAL,
    STORE,
    TOKENS,
    WEBSOCKETS,
)
from .meetings import MeetingService
from .meetings.clustered import ClusteredMeetingService
from .metrics import ControlMetrics
from .responses import json_response
from .storage import StoreUnavailable, open_store
from .workers import WorkerPool

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
    503: "media_unavailable",
}


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return json_response({"error": code, "message": message}, status=status, headers=headers or None)


def api_path(request: web.Request) -> str:
    """The request's path with `[server] base_path` taken off, when it came through it."""
    path = request.path
    base = request.app[CONFIG].server.base_path
    if base and (path == base or path.startswith(base + "/")):
        return path[len(base):]
    return path


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as {"error", "message"}: ours, aiohttp's (404, 405, 413) and bugs."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except StoreUnavailable as exc:
        # The database is down or slow: the node stays up, and answers again once it is back.
        log.warning("store unavailable method=%s path=%s error=%s", request.method, request.path, exc)
        return error_response(503, "store_unavailable", "the database is unavailable, try again later")
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
    path = api_path(request)
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
        base = request.app[CONFIG].server.base_path
        if base and route.startswith(base + "/"):
            route = route[len(base):]  # one label per operation, whichever path it came by
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


class ReportBox:
    """The last media stats report, refreshed by each /metrics scrape."""

    report: StatsReport | None = None


def default_media(config: Config) -> MediaService:
    """The media plane: `[media] workers` worker processes, started on first use (`serve`
    starts them before it listens)."""
    return WorkerPool(
        config.media.plane_settings(),
        config.media.workers,
        log_level=config.logging.level,
        log_format=config.logging.format,
    )


def openapi_document(request: web.Request) -> dict:
    """The packaged document, with `servers` naming the host (and base path) it was asked by,
    and without the routes this server does not serve (/metrics, /demo/token when off)."""
    doc = json.loads(importlib.resources.files("control_api").joinpath("openapi.json").read_text())
    config = request.app[CONFIG]
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    origin = f"{scheme if scheme in ('http', 'https') else request.scheme}://{request.host}"
    base = config.server.base_path
    through_base = bool(base) and request.path.startswith(base + "/")
    doc["servers"] = [{"url": origin + (base if through_base else "")}]
    served_elsewhere = {"/health": True, "/metrics": config.metrics.enabled, "/demo/token": config.demo.enabled}
    for path, served in served_elsewhere.items():
        if not served:
            doc["paths"].pop(path, None)
        elif through_base and path in doc["paths"]:
            doc["paths"][path]["servers"] = [{"url": origin}]  # never under the base path
    return doc


async def _openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request))


async def _metrics(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    if config.metrics.token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.metrics.token}".encode()):
            raise ApiError(401, "unauthorized", "a metrics token is required")
    media = request.app[MEDIA]
    try:
        request.app[MEDIA_REPORT].report = await asyncio.wait_for(media.stats_report(), 2.0)
    except (MediaError, TimeoutError):
        pass  # the last report serves
    metrics = request.app[METRICS]
    try:
        metrics.waiting_users.set(await request.app[STORE].count_waiting())
    except StoreUnavailable:
        pass  # the last count serves
    registry = metrics.registry
    body = generate_latest(registry)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


async def _health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


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
    metrics = ControlMetrics()
    media = media if media is not None else default_media(config)
    places = {"recordings_dir": config.recording_path, "work_dir": data_dir / "recordings-in-progress"}
    domain: MeetingService
    if config.cluster.redis_url:  # one node of a cluster (DESIGN section 9.2)
        hub: EventHub = ClusterHub(config.meetings.max_events_queue)
        domain = ClusteredMeetingService(hub, media, ClusterNode(config, hub), **places)  # type: ignore[arg-type]
    else:
        hub = EventHub(config.meetings.max_events_queue)
        domain = MeetingService(hub, media, **places)
    hub.on_sent = metrics.events_sent.inc
    # The media plane counts in plain ints, in each worker; /metrics asks for fresh snapshots
    # and the collector sums them (the control plane's own loop lag included).
    control_stats = MediaStats()
    app[MEDIA_STATS] = control_stats
    box = app[MEDIA_REPORT] = ReportBox()

    def media_report() -> StatsReport:
        report = box.report or StatsReport(workers={})
        extra = [report.retired] if report.retired else []
        return StatsReport(
            workers=report.workers,
            retired=MediaStats.merged([*extra, control_stats.snapshot()]).snapshot(),
            restarts=report.restarts,
        )

    metrics.registry.register(MediaCollector(media_report))
    metrics.bind(
        meetings_active=lambda: domain.active_meetings,
        participants=lambda: domain.participant_count,
        websocket_sessions=lambda: hub.count,
    )
    app[CONFIG] = config
    app[HUB] = hub
    app[MEDIA] = media
    app[DOMAIN] = domain
    app[TOKENS] = TokenAuthority(secret, config.auth.leeway_seconds)
    app[METRICS] = metrics
    app[WEBSOCKETS] = set()

    add_routes(app, config.server.base_path)
    app.router.add_get("/openapi.json", _openapi)
    if config.server.base_path:
        app.router.add_get(config.server.base_path + "/openapi.json", _openapi)
    app.router.add_get("/health", _health)
    if config.metrics.enabled:
        app.router.add_get("/metrics", _metrics)
    if config.demo.enabled:
        with contextlib.suppress(ImportError):
            from .demo import add_demo_routes

            add_demo_routes(app)

    app.cleanup_ctx.append(_store_task)  # first: the tasks after it use the store
    if config.cluster.redis_url:
        app.cleanup_ctx.append(_cluster_task)
    app.cleanup_ctx.append(_media_events_task)
    app.cleanup_ctx.append(_expiry_task)
    app.cleanup_ctx.append(_loop_lag_task)
    app.on_shutdown.append(_close_websockets)
    app.on_cleanup.append(_close_state)
    return app


async def _store_task(app: web.Application) -> AsyncIterator[None]:
    """Opens the store (PostgreSQL: connected and migrated) and hands it to the domain. It is
    closed in _close_state, after the media plane: sockets still closing may need it."""
    store = await open_store(app[CONFIG])
    try:
        await app[DOMAIN].open(store)
    except BaseException:
        await store.close()
        raise
    app[STORE] = store
    yield


async def _cluster_task(app: web.Application) -> AsyncIterator[None]:
    """Joins the cluster once the store is open; at shutdown (after the sockets closed) stops
    this node's meetings, then leaves it."""
    domain = app[DOMAIN]
    assert isinstance(domain, ClusteredMeetingService)
    await domain.start_cluster()
    yield
    await domain.stop_cluster()


async def _expiry_task(app: web.Application) -> AsyncIterator[None]:
    interval = max(0.05, app[CONFIG].meetings.expiry_check_seconds)
    domain = app[DOMAIN]

    async def loop() -> None:
        while True:
            try:
                await domain.expire()
            except StoreUnavailable as exc:  # tried again at the next interval
                log.warning("expiry check failed error=%s", exc)
            except Exception:
                log.exception("expiry check failed")
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _media_events_task(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[DOMAIN].run_media_events())
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
    store = app.get(STORE)
    if store is not None:
        await store.close()


__all__ = ["create_app", "default_media", "error_response"]
