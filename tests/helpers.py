"""Test harness: a real meeting-sfu server on 127.0.0.1 and real clients of its API.

`start_server` runs the aiohttp app on an ephemeral loopback port over a real SQLite file in
`tmp_path`; `EventsClient` is a real /events websocket that records every message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from control_api.app import create_app
from control_api.auth import TokenAuthority
from control_api.config import Config
from control_api.keys import TOKENS
from control_api.runner import AppRunner

SECRET = "test-secret-0123456789-0123456789-0123456789"


def new_id() -> str:
    return str(uuid.uuid4())


class EventsClient:
    """One /events websocket; `wait` returns the next unconsumed message of a type."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self.queue_id = ""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(msg.json())
                self._changed.set()
        self._changed.set()

    @property
    def closed(self) -> bool:
        return self.ws.closed

    def _find(self, type_: str, predicate: Callable[[dict], bool] | None) -> dict | None:
        for i, m in enumerate(self.messages):
            if i in self._consumed or m.get("type") != type_:
                continue
            if predicate is None or predicate(m):
                self._consumed.add(i)
                return m
        return None

    async def wait(
        self, type_: str, predicate: Callable[[dict], bool] | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        async def loop() -> dict[str, Any]:
            while True:
                found = self._find(type_, predicate)
                if found is not None:
                    return found
                if self.ws.closed and self._reader.done():
                    raise AssertionError(f"socket closed before {type_}; got {self.types()}")
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {type_} within {timeout}s; got {self.types()}") from None

    def types(self) -> list[str]:
        return [m.get("type", "?") for m in self.messages]

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == type_]

    async def settle(self, delay: float = 0.2) -> None:
        """Give in-flight events time to arrive (used before asserting an absence)."""
        await asyncio.sleep(delay)

    async def send(self, data: dict[str, Any]) -> None:
        await self.ws.send_json(data)

    async def close(self) -> None:
        await self.ws.close()
        try:
            await asyncio.wait_for(self._reader, 5)
        except (TimeoutError, asyncio.CancelledError):
            self._reader.cancel()


class ServerHandle:
    """A running server and an HTTP client session pointed at it."""

    def __init__(self, app: web.Application, runner: web.AppRunner, url: str, config: Config) -> None:
        self.app = app
        self.runner = runner
        self.url = url
        self.config = config
        self.http = aiohttp.ClientSession()
        self.sockets: list[EventsClient] = []

    @property
    def authority(self) -> TokenAuthority:
        return self.app[TOKENS]

    def token(
        self,
        user_id: str,
        rooms: dict[str, str] | None = None,
        *,
        name: str | None = None,
        guest: bool = False,
        ttl: int = 3600,
    ) -> str:
        return self.authority.mint(user_id, name=name, guest=guest, rooms=rooms, ttl_seconds=ttl)

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        json: Any = None,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | str | None = None,
    ) -> tuple[int, Any]:
        """Returns (status, parsed JSON body or None)."""
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.url + path, json=json, data=data, headers=h) as r:
            raw = await r.read()
            body = None
            if raw:
                try:
                    body = await r.json(content_type=None)
                except ValueError:
                    body = raw.decode(errors="replace")
            return r.status, body

    async def events(self, token: str, *, via: str = "header", path: str = "/events") -> EventsClient:
        headers = {}
        url = self.url.replace("http", "ws", 1) + path
        if via == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif via == "cookie":
            headers["Cookie"] = f"ZM_AUTH_TOKEN={token}"
        else:
            url += f"?access_token={token}"
        ws = await self.http.ws_connect(url, headers=headers)
        client = EventsClient(ws)
        hello = await client.wait("websocketConnected")
        client.queue_id = hello["queueId"]
        self.sockets.append(client)
        return client

    async def stop(self) -> None:
        for s in self.sockets:
            if not s.closed:
                await s.close()
        await self.http.close()
        await self.runner.cleanup()


async def start_server(tmp_path, media_service=None, **sections: dict[str, Any]) -> ServerHandle:
    """Start the app on 127.0.0.1:<ephemeral> with data in `tmp_path`; `sections` override
    config sections, e.g. `meetings={"expiry_check_seconds": 0.1}`."""
    overrides: dict[str, dict[str, Any]] = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "auth": {"jwt_secret": SECRET},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    config = Config().with_overrides(overrides)
    app = create_app(config, media=media_service)
    runner = AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return ServerHandle(app, runner, f"http://127.0.0.1:{port}", config)
