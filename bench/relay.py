"""What a relayed call costs in a cluster (DESIGN section 9.2): join and subscribe sent to the node
that owns the meeting, against the same calls sent to another node (relayed over Redis).

Two nodes (real aiohttp apps in this process, one media worker each) over one PostgreSQL database
and one Redis. One meeting lives on node A, its owner publishes a camera (aiortc). Each round a
new member opens his /events socket on the node he calls and, interleaving the two paths:

- join: POST /join, timed to its answer;
- subscribe: PUT /media/subscribe to the owner's camera, timed until the server's offer
  (MEETING_SDP_OFFERED) reaches his socket: what a client waits for;

then leaves and closes his socket. p50/p99 per path, as a table and JSON.

    .venv/bin/python -m bench.relay --rounds 100 --json bench/results/relay.json

Without `--redis-url`/`--database-url` it starts a redis-server and a PostgreSQL of its own on
free loopback ports (tests/servers.py), stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from control_api.app import create_app
from control_api.config import Config
from control_api.keys import TOKENS
from control_api.runner import AppRunner

SECRET = "bench-relay-secret-0123456789-0123456789"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Node:
    def __init__(self, app: web.Application, runner: web.AppRunner, url: str) -> None:
        self.app, self.runner, self.url = app, runner, url

    def token(self, user: str, rooms: dict[str, str]) -> str:
        return self.app[TOKENS].mint(user, rooms=rooms, ttl_seconds=3600)


async def start_node(root: Path, node_id: str, database_url: str, redis_url: str, prefix: str) -> Node:
    config = Config().with_overrides(
        {
            "storage": {"data_dir": str(root / node_id), "database_url": database_url},
            "auth": {"jwt_secret": SECRET},
            "media": {"workers": 1, "ice_addresses": ["127.0.0.1"]},
            "cluster": {"redis_url": redis_url, "node_id": node_id, "key_prefix": prefix},
            "logging": {"level": "warning"},
        }
    )
    app = create_app(config)
    runner = AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return Node(app, runner, f"http://127.0.0.1:{port}")


class Socket:
    """One /events socket; `next(type)` waits for the next message of that type."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.queue.put_nowait(json.loads(msg.data))

    async def next(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.queue.get()
                if message.get("type") == type_:
                    return message

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


async def open_socket(http: aiohttp.ClientSession, node: Node, token: str) -> tuple[Socket, str]:
    url = node.url.replace("http", "ws", 1) + "/events"
    ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
    socket = Socket(ws)
    return socket, (await socket.next("websocketConnected"))["queueId"]


async def call(http: aiohttp.ClientSession, node: Node, method: str, path: str, token: str, body: Any = None,
               queue: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    if queue:
        headers["queue-id"] = queue
    async with http.request(method, node.url + path, json=body, headers=headers) as r:
        raw = await r.read()
        return r.status, (json.loads(raw) if raw else None)


JOIN = {"audioStreamEnabled": False, "videoStreamEnabled": False}


async def run(args: argparse.Namespace, database_url: str, redis_url: str) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    with TemporaryDirectory() as tmp:
        a = await start_node(Path(tmp), "a", database_url, redis_url, prefix)
        b = await start_node(Path(tmp), "b", database_url, redis_url, prefix)
        http = aiohttp.ClientSession()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            room, owner = str(uuid.uuid4()), str(uuid.uuid4())
            owner_token = a.token(owner, {room: "owner"})
            status, meeting = await call(http, a, "POST", "/meetings", owner_token,
                                         {"name": "bench", "meetingType": "permanent", "roomId": room})
            mid = meeting["id"]
            status, _ = await call(http, b, "POST", f"/meetings/{mid}/start", owner_token)  # lands on a
            assert status == 200
            owner_socket, owner_queue = await open_socket(http, a, owner_token)
            status, _ = await call(http, a, "POST", f"/meetings/{mid}/join", owner_token, JOIN, owner_queue)
            assert status == 200
            pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            status, _ = await call(http, a, "PUT", f"/meetings/{mid}/media", owner_token,
                                   {"type": "video", "enabled": True, "sdp": pc.localDescription.sdp})
            assert status == 204
            answer = await owner_socket.next("MEETING_SDP_ANSWERED")
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            await asyncio.sleep(1.0)  # the camera's stream is up before anyone subscribes

            times: dict[str, dict[str, list[float]]] = {p: {"join": [], "subscribe": []} for p in ("owner", "relayed")}
            for i in range(args.warmup + args.rounds):
                for path, node in (("owner", a), ("relayed", b)):
                    user = str(uuid.uuid4())
                    token = node.token(user, {room: "member"})
                    socket, queue = await open_socket(http, node, token)
                    started = time.perf_counter()
                    status, body = await call(http, node, "POST", f"/meetings/{mid}/join", token, JOIN, queue)
                    joined = time.perf_counter()
                    assert (status, body) == (200, {"status": "ACCEPTED"}), body
                    started_sub = time.perf_counter()
                    status, body = await call(http, node, "PUT", f"/meetings/{mid}/media/subscribe", token,
                                              {"subscribe": [{"userId": owner, "type": "video"}], "unsubscribe": []})
                    assert status == 204, body
                    await socket.next("MEETING_SDP_OFFERED")
                    offered = time.perf_counter()
                    if i >= args.warmup:
                        times[path]["join"].append((joined - started) * 1000)
                        times[path]["subscribe"].append((offered - started_sub) * 1000)
                    await call(http, node, "POST", f"/meetings/{mid}/leave", token)
                    await socket.close()
            await owner_socket.close()
        finally:
            await pc.close()
            await http.close()
            for node in (b, a):
                await node.runner.cleanup()
    results = {
        path: {
            op: {"p50_ms": round(statistics.median(v), 2), "p99_ms": round(percentile(v, 0.99), 2), "n": len(v)}
            for op, v in ops.items()
        }
        for path, ops in times.items()
    }
    return {"command": ["python", "-m", "bench.relay", *sys.argv[1:]], "results": results}


def table(report: dict[str, Any]) -> str:
    lines = ["| call | through the owner p50 / p99 (ms) | through another node p50 / p99 (ms) |", "| --- | --- | --- |"]
    r = report["results"]
    for op, label in (("join", "join"), ("subscribe", "subscribe (to the server's offer)")):
        o, x = r["owner"][op], r["relayed"][op]
        lines.append(f"| {label} | {o['p50_ms']:.1f} / {o['p99_ms']:.1f} | {x['p50_ms']:.1f} / {x['p99_ms']:.1f} |")
    return "\n".join(lines)


async def _with_servers(args: argparse.Namespace) -> dict[str, Any]:
    if args.redis_url and args.database_url:
        return await run(args, args.database_url, args.redis_url)
    import shutil

    import asyncpg

    from tests.servers import PostgresServer, RedisServer, postgres_bindir

    redis = RedisServer(shutil.which("redis-server") or "redis-server")
    bindir = postgres_bindir()
    assert bindir is not None, "PostgreSQL is not installed"
    pg = PostgresServer(bindir)
    try:
        pg.start()
        conn = await asyncpg.connect(pg.url())
        try:
            await conn.execute('CREATE DATABASE "bench_relay"')
        finally:
            await conn.close()
        return await run(args, pg.url("bench_relay"), redis.url)
    finally:
        with contextlib.suppress(Exception):
            pg.close()
        redis.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100, help="measured rounds per path (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="rounds not counted (default 5)")
    parser.add_argument("--redis-url", default="", help="a running Redis (default: one of its own)")
    parser.add_argument("--database-url", default="", help="a running PostgreSQL database (default: one of its own)")
    parser.add_argument("--json", metavar="FILE", help="write the results there")
    args = parser.parse_args(argv)
    report = asyncio.run(_with_servers(args))
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
