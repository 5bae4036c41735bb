"""An aiohttp runner hardened for the open internet: JSON protocol errors, quiet logs for
malformed requests, and a bound on the time a request's head may take.

Requests that aiohttp's parser rejects (bad header bytes, oversized headers, an unknown method
token) never reach the application's middlewares; aiohttp answers them itself in plain text and
logs each with a full traceback at error level, so anyone can fill the log. DESIGN section 8
wants every error as {"error", "message"}, so the connection handler's `handle_error` is
overridden here: the parser's message is not echoed (it quotes raw input), and the log gets one
line per kind of error at most every `LOG_INTERVAL` seconds, with the count of those suppressed.

aiohttp has no header-read timeout: a client sending its headers a byte at a time holds a
connection (and a file descriptor) for ever. The handler here closes a connection whose request
line and headers are not complete `header_timeout` seconds after they started (for a new
connection: after it opened).
"""

from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from .keys import CONFIG
from .responses import json_response

log = logging.getLogger("meeting_sfu.http")

LOG_INTERVAL = 10.0  # seconds between two log lines of one kind of malformed request
DEFAULT_HEADER_TIMEOUT = 10.0


class RateLimitedLog:
    """At most one line per kind per `interval`; the next line says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        self._kinds: dict[str, list[float | int]] = {}  # kind -> [last logged at, suppressed]

    def log(self, level: int, kind: str, msg: str, *args: Any, exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        state = self._kinds.get(kind)
        if state is not None and now - state[0] < self._interval:
            state[1] += 1
            return
        suppressed = state[1] if state is not None else 0
        if len(self._kinds) >= 256:  # kinds come from a fixed set of statuses and classes
            self._kinds.clear()
        self._kinds[kind] = [now, 0]
        if suppressed:
            msg += " (%d similar suppressed)"
            args = (*args, suppressed)
        self._logger.log(level, msg, *args, exc_info=exc_info)


_protocol_log = RateLimitedLog(log)


class _HardenedRequestHandler(RequestHandler):
    def __init__(self, *args: Any, header_timeout: float = DEFAULT_HEADER_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._heads_at_arm = 0

    # --- header-read timeout ----------------------------------------------------------------

    # aiohttp's own names, read only: `_waiter` is pending while the handler waits for the next
    # request (its keep-alive check reads it too), `_request_count` counts parsed heads.

    def _idle(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm(self) -> None:
        if self._header_timeout > 0 and self._header_timer is None:
            self._heads_at_arm = self._request_count
            self._header_timer = self._loop.call_later(self._header_timeout, self._header_expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.transport is not None and self._request_count == self._heads_at_arm:
            _protocol_log.log(logging.INFO, "header-timeout", "HTTP request head too slow, connection closed")
            self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._disarm()  # a complete head arrived: the request is being handled
        elif self._idle():
            self._arm()  # the first bytes of the next head (or more of a slow one)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # --- errors below the application --------------------------------------------------------

    def handle_error(self, request, status=500, exc=None, message=None):  # noqa: ANN001, ANN201
        if status >= 500:
            # A bug below the application's error middleware: worth its traceback, not a flood.
            _protocol_log.log(logging.ERROR, f"{status}:{type(exc).__name__}", "error handling request", exc_info=exc)
        else:
            _protocol_log.log(
                logging.INFO,
                f"{status}:{type(exc).__name__}",
                "malformed HTTP request status=%d error=%s",
                status,
                type(exc).__name__,
            )
        # some data already got sent, connection is broken
        if request.writer.output_size > 0:
            raise ConnectionError("response already sent, cannot send the error")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        code = "bad_request" if status == 400 else phrase.lower().replace(" ", "_")
        text = "malformed HTTP request" if status == 400 else phrase
        error = json_response({"error": code, "message": text}, status=status)
        error.force_close()
        return error


class _HardenedServer(Server):
    header_timeout = DEFAULT_HEADER_TIMEOUT

    def __call__(self) -> RequestHandler:
        return _HardenedRequestHandler(
            self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs
        )


class AppRunner(web.AppRunner):
    """web.AppRunner with JSON bodies for errors raised below the application, rate-limited
    logs for them, and `[server] header_timeout_seconds`."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _HardenedServer
        config = self.app.get(CONFIG)
        if config is not None:
            server.header_timeout = config.server.header_timeout_seconds  # type: ignore[attr-defined]
        return server
