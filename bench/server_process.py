"""The server under test, run as a child process (ours or the naive baseline) and stopped by PID.

Ours is `meeting-sfu serve` configured through MEETING_SFU_* variables: a free port on
127.0.0.1, a temporary data directory, a generated JWT secret, ICE on loopback.

`Cluster` is N of ours in cluster mode (DESIGN section 9.2) over one redis-server and one
PostgreSQL of its own (tests/servers.py: free loopback ports, temporary directories), every
process stopped by its PID at the end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server under test run as a child process (ours or the baseline), stopped by PID."""

    def __init__(
        self, kind: str, bitrate: int, *, secret: str | None = None, extra_env: dict[str, str] | None = None
    ) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = secret or secrets.token_urlsafe(32)
        self.dir = Path(tempfile.mkdtemp(prefix=f"meeting-sfu-bench-{kind}-"))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if kind == "sfu":
            cmd = [sys.executable, "-m", "control_api.cli", "serve"]
            env.update(
                {
                    "MEETING_SFU_SERVER_HOST": "127.0.0.1",
                    "MEETING_SFU_SERVER_PORT": str(self.port),
                    "MEETING_SFU_STORAGE_DATA_DIR": str(self.dir / "data"),
                    "MEETING_SFU_RECORDING_DIR": str(self.dir / "recordings"),
                    "MEETING_SFU_AUTH_JWT_SECRET": self.secret,
                    "MEETING_SFU_MEDIA_ICE_ADDRESSES": "127.0.0.1",
                    "MEETING_SFU_LOGGING_LEVEL": "warning",
                    **(extra_env or {}),
                }
            )
        else:
            cmd = [
                sys.executable,
                "-m",
                "bench.baseline",
                "--port",
                str(self.port),
                f"--secret={self.secret}",
                "--bitrate",
                str(bitrate),
            ]
        self.log_path = self.dir / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.last_log = ""

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} server exited: {self.log_tail()}")
                try:
                    async with http.get(
                        f"{self.url}/public/meetings/{uuid.uuid4()}",
                        timeout=aiohttp.ClientTimeout(total=2),
                    ) as r:
                        await r.read()
                        return
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.1)
        raise RuntimeError(
            f"{self.kind} server not ready within {timeout:.0f} s: {self.log_tail()}"
        )

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s), then the log is kept in `last_log` and the directory removed."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        self.last_log = self.log_tail(1_000_000)
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """`n` nodes of ours in cluster mode on this machine: one redis-server and one PostgreSQL
    (started here, on free loopback ports), one `meeting-sfu serve` per node with the same JWT
    secret, its own HTTP port, node id `node-<i>` and data directory, `[media] workers = 1`
    unless MEETING_SFU_MEDIA_WORKERS says otherwise (and, when MEETING_SFU_MEDIA_UDP_PORT is
    set, UDP ports of its own: node i from udp_port + i * workers). `stop()` ends every process
    by its PID and removes the temporary directories."""

    def __init__(self, n: int, bitrate: int) -> None:
        if str(ROOT) not in sys.path:  # `meeting-sfu bench` from elsewhere: the repository's test helpers
            sys.path.append(str(ROOT))
        from tests.servers import PostgresServer, RedisServer, postgres_bindir

        self.n = n
        self.secret = secrets.token_urlsafe(32)
        self.prefix = f"bench{uuid.uuid4().hex[:8]}:"
        self.nodes: list[ServerProcess] = []
        self.node_ids = [f"node-{i}" for i in range(n)]
        self.redis: RedisServer | None = None
        self.postgres: PostgresServer | None = None
        try:
            binary = shutil.which("redis-server")
            bindir = postgres_bindir()
            if binary is None or bindir is None:
                raise RuntimeError("--nodes > 1 needs redis-server and PostgreSQL (scripts/test installs them)")
            self.redis = RedisServer(binary)
            self.postgres = PostgresServer(bindir)
            self.postgres.start()
            workers = int(os.environ.get("MEETING_SFU_MEDIA_WORKERS") or 1)
            udp_port = int(os.environ.get("MEETING_SFU_MEDIA_UDP_PORT") or 0)
            for i, node_id in enumerate(self.node_ids):
                env = {
                    "MEETING_SFU_STORAGE_DATABASE_URL": self.postgres.url(),
                    "MEETING_SFU_CLUSTER_REDIS_URL": self.redis.url,
                    "MEETING_SFU_CLUSTER_NODE_ID": node_id,
                    "MEETING_SFU_CLUSTER_KEY_PREFIX": self.prefix,
                    "MEETING_SFU_MEDIA_WORKERS": str(workers),
                }
                if udp_port:  # worker k of a node binds its udp_port + k (workers 0: one per CPU)
                    env["MEETING_SFU_MEDIA_UDP_PORT"] = str(udp_port + i * (workers or os.cpu_count() or 1))
                self.nodes.append(ServerProcess("sfu", bitrate, secret=self.secret, extra_env=env))
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def service_pids(self) -> dict[str, int | None]:
        return {
            "redis": self.redis.proc.pid if self.redis and self.redis.proc else None,
            "postgres": self.postgres.proc.pid if self.postgres and self.postgres.proc else None,
        }

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Every node answers HTTP, and every node is in the registry (a start sees them all)."""
        await asyncio.gather(*(node.wait_ready(timeout) for node in self.nodes))
        deadline = time.monotonic() + timeout
        async with self.link() as (_, registry):
            while time.monotonic() < deadline:
                live = {entry.node_id for entry in await registry.live()}
                if live >= set(self.node_ids):
                    return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"not every node joined the cluster within {timeout:.0f} s: {self.nodes[0].log_tail()}")

    def link(self) -> "_ClusterView":
        return _ClusterView(self)

    def stop(self) -> None:
        """The nodes first (each stops its meetings and leaves the cluster), then PostgreSQL and Redis."""
        for node in self.nodes:
            try:
                node.stop()
            except Exception:  # the others are stopped all the same
                if node.proc.poll() is None:
                    os.kill(node.pid, signal.SIGKILL)
                    node.proc.wait(5)
        if self.postgres is not None:
            self.postgres.close()
        if self.redis is not None:
            self.redis.close()


class _ClusterView:
    """`async with cluster.link() as (claims, registry)`: the cluster's own view of its claims
    and live nodes, read from its Redis (who owns a meeting, each node's address)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def __aenter__(self) -> tuple[Any, Any]:
        from control_api.cluster import Claims, NodeRegistry, RedisLink

        assert self.cluster.redis is not None
        self._link = RedisLink(self.cluster.redis.url, prefix=self.cluster.prefix)
        return Claims(self._link), NodeRegistry(self._link, "bench", "")

    async def __aexit__(self, *exc: object) -> None:
        await self._link.close()
