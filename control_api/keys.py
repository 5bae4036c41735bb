"""Typed keys for what the application and its requests share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from sfu.api import MediaService
    from sfu.metrics import MediaStats

    from .app import ReportBox
    from .auth import TokenAuthority
    from .config import Config
    from .events import EventHub
    from .meetings import MeetingService
    from .metrics import ControlMetrics
    from .storage import AsyncStore

CONFIG: web.AppKey["Config"] = web.AppKey("config")
STORE: web.AppKey["AsyncStore"] = web.AppKey("store")
HUB: web.AppKey["EventHub"] = web.AppKey("hub")
DOMAIN: web.AppKey["MeetingService"] = web.AppKey("domain")
MEDIA: web.AppKey["MediaService"] = web.AppKey("media")
TOKENS: web.AppKey["TokenAuthority"] = web.AppKey("tokens")
METRICS: web.AppKey["ControlMetrics"] = web.AppKey("metrics")
MEDIA_STATS: web.AppKey["MediaStats"] = web.AppKey("media_stats")  # the control plane's own (loop lag)
MEDIA_REPORT: web.AppKey["ReportBox"] = web.AppKey("media_report")  # the last media stats
WEBSOCKETS: web.AppKey[set] = web.AppKey("websockets")
PRINCIPAL = "meeting_sfu.principal"
