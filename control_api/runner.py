"""An aiohttp runner whose protocol-level errors are JSON too.

Requests that aiohttp's parser rejects (bad header bytes, oversized headers, an unknown method
token) never reach the application's middlewares; aiohttp answers them itself in plain text.
DESIGN section 8 wants every error as {"error", "message"}, so the connection handler's
`handle_error` is overridden here. The parser's message is not echoed (it quotes raw input).
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from .responses import json_response


class _JsonErrorRequestHandler(RequestHandler):
    def handle_error(self, request, status=500, exc=None, message=None):  # noqa: ANN001, ANN201
        response = super().handle_error(request, status, exc, message)  # logs, checks state
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        code = "bad_request" if status == 400 else phrase.lower().replace(" ", "_")
        text = "malformed HTTP request" if status == 400 else phrase
        error = json_response({"error": code, "message": text}, status=status)
        error.force_close()
        del response
        return error


class _JsonErrorServer(Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """web.AppRunner with JSON bodies for errors raised below the application."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server
