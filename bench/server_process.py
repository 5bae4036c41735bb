"""The server under test, run as a child process (ours or the naive baseline) and stopped by PID.

Ours is `meeting-sfu serve` configured through MEETING_SFU_* variables: a free port on
127.0.0.1, a temporary data directory, a generated JWT secret, ICE on loopback.
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

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server under test run as a child process (ours or the baseline), stopped by PID."""

    def __init__(self, kind: str, bitrate: int) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = secrets.token_urlsafe(32)
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
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
