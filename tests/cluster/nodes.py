"""Nodes of a cluster for the tests: real aiohttp apps in this process (`in_process`), or real
`meeting-sfu serve` processes (`NodeProcess`), over one fresh PostgreSQL database and one Redis
key prefix per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from control_api.cluster import Claims, NodeRegistry, RedisLink
from tests.helpers import SECRET, ServerHandle, start_server
from tests.servers import free_port


def cluster_sections(database_url: str, redis_url: str, prefix: str, node_id: str) -> dict[str, dict[str, Any]]:
    return {
        "storage": {"database_url": database_url},
        "cluster": {"redis_url": redis_url, "node_id": node_id, "key_prefix": prefix},
        "media": {"workers": 1, "ice_addresses": ["127.0.0.1"]},
    }


async def in_process(tmp_path: Path, database_url: str, redis_url: str, prefix: str, node_id: str) -> ServerHandle:
    return await start_server(tmp_path / node_id, **cluster_sections(database_url, redis_url, prefix, node_id))


async def owner_of(redis_url: str, prefix: str, meeting_id: str) -> str | None:
    link = RedisLink(redis_url, prefix=prefix)
    try:
        return await Claims(link).owner(meeting_id)
    finally:
        await link.close()


async def load_of(redis_url: str, prefix: str, node_id: str, participants: int) -> bool:
    """Whether the registry shows `node_id` carrying `participants` participants."""
    link = RedisLink(redis_url, prefix=prefix)
    try:
        entry = await NodeRegistry(link, "probe", "-").get(node_id)
    finally:
        await link.close()
    return entry is not None and entry.load.participants == participants


class NodeProcess:
    """`meeting-sfu serve` as a child process, stopped (or killed) by its PID."""

    def __init__(self, tmp_path: Path, database_url: str, redis_url: str, prefix: str, node_id: str) -> None:
        self.node_id = node_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home = tmp_path / node_id
        home.mkdir(parents=True, exist_ok=True)
        self.config = home / "config.toml"
        self.config.write_text(
            f"""
[server]
host = "127.0.0.1"
port = {self.port}
[auth]
jwt_secret = "{SECRET}"
[storage]
data_dir = "{home / 'data'}"
database_url = "{database_url}"
[media]
workers = 1
ice_addresses = ["127.0.0.1"]
[cluster]
redis_url = "{redis_url}"
node_id = "{node_id}"
key_prefix = "{prefix}"
"""
        )
        self.log = home / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "meeting-sfu"), "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.node_id} exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"node {self.node_id} not serving within {timeout} s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9, by its PID (its media worker, orphaned, is killed by its PID too)."""
        assert self.proc is not None
        from tests.procnet import child_pids

        children = child_pids(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


class RemoteHandle(ServerHandle):
    """The test clients' view of a node run as a process: HTTP, /events and tokens."""

    def __init__(self, url: str) -> None:
        import aiohttp

        from control_api.auth import TokenAuthority

        self.url = url
        self.http = aiohttp.ClientSession()
        self.sockets = []
        self._authority = TokenAuthority(SECRET, 5)

    @property
    def authority(self):  # noqa: ANN201
        return self._authority

    async def stop(self) -> None:
        for s in self.sockets:
            if not s.closed:
                await s.close()
        await self.http.close()
