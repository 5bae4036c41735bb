"""Real PostgreSQL and redis-server for the tests, started once per session on free loopback ports.

Each runs from a temporary directory of its own and is stopped by its PID at the end; Debian's
own services are never touched. scripts/test installs both with apt-get when missing; the
fixtures skip, saying why, only when the binaries are not there. PostgreSQL refuses to run as
root, so under root the server runs as the `postgres` user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT} s")


def _stop(proc: subprocess.Popen | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _memory_dir() -> str | None:
    """tmpfs when there is one: a data directory there costs no disk writes."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def postgres_bindir() -> Path | None:
    """Debian's versioned directory (newest version), else the directory of `initdb` on PATH."""
    found = sorted(
        (p for p in glob.glob("/usr/lib/postgresql/*/bin/initdb") if Path(p).parent.parent.name.isdigit()),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """One postgres process over a fresh data directory; stop() and start() keep the data."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="sfu-pg-", dir=_memory_dir()))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._user: str | None = None
        try:
            if os.geteuid() == 0:
                try:
                    pwd.getpwnam("postgres")
                except KeyError:
                    raise RuntimeError("running as root and there is no `postgres` user to run the server") from None
                self._user = "postgres"
                self._own(self.root)
            template = self._template()
            if template is not None:
                subprocess.run(["cp", "-a", str(template), str(self.data)], check=True)
            else:
                self._initdb(self.data)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _initdb(self, data: Path) -> None:
        self._run(
            [
                str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions", "--wal-segsize=1",
            ],
        )

    def _template(self) -> Path | None:
        """A data directory made by initdb once per venv and server version, copied for each run.

        initdb costs seconds of wall time on a loaded machine; a copy costs a fraction of one.
        Outside a venv there is no place of our own to keep it, and each run calls initdb.
        """
        if sys.prefix == sys.base_prefix:
            return None
        version = subprocess.run(
            [str(self.bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[2]
        template = Path(sys.prefix) / f"pg-template-{version}-{self._user or os.getuid()}"
        if not (template / "PG_VERSION").exists():
            work = Path(tempfile.mkdtemp(prefix="pg-template-", dir=sys.prefix))
            try:
                self._own(work)
                self._initdb(work / "data")
                shutil.rmtree(template, ignore_errors=True)
                os.rename(work / "data", template)  # made whole, then put in place
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return template

    def _own(self, path: Path) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(args, user=self._user, capture_output=True, text=True, cwd=self.root, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr[-2000:]}")

    def start(self) -> None:
        """Starts postgres (on the port it had before, if any) and waits until it accepts connections."""
        self.port = self.port or free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                    "-h", "127.0.0.1", "-k", str(self.root),
                    # Test data need not survive a power cut, only the server's own death: a
                    # commit is written (not flushed) before it is answered.
                    "-c", "fsync=off", "-c", "full_page_writes=off",
                    "-c", "max_connections=100", "-c", "shared_buffers=16MB",
                ],
                user=self._user, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
            )
        _wait_port(self.port, self.proc, "postgres", self.log)
        self._wait_ready()

    def _wait_ready(self) -> None:
        # The port opens before the server takes queries ("the database system is starting up").
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                capture_output=True,
            )
            if done.returncode == 0:
                return
            time.sleep(0.02)
        raise RuntimeError("postgres did not become ready")

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut, as when a database server goes away."""
        _stop(self.proc, signal.SIGINT)
        self.proc = None

    def _processes(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, ...)."""
        if self.proc is None:
            return []
        pids = [self.proc.pid]
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
        return pids

    def pause(self) -> None:
        """SIGSTOP to every process of the server: it keeps its sockets open and answers nothing."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL to every process of the server, as in a crash; start() recovers from its WAL."""
        pids = self._processes()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)
        self.proc = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """One redis-server without persistence, in a temporary directory."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="sfu-redis-"))
        self.log = self.root / "redis.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        try:
            self.start()
        except RuntimeError:
            self.close()
            raise

    def start(self) -> None:
        """Starts redis-server (again, on the same port after a stop) and waits until it listens."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no",
                ],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
            )
        _wait_port(self.port, self.proc, "redis-server", self.log)

    def kill(self) -> None:
        """SIGKILL, as in a crash: connections are cut and, without persistence, the data is gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: it keeps its socket open and answers nothing."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        _stop(self.proc, signal.SIGTERM)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/test installs it with apt-get)")
    server = PostgresServer(bindir)
    try:
        for attempt in range(3):  # a free port may be taken between the probe and the bind
            try:
                server.start()
                break
            except RuntimeError:
                server.stop()
                server.port = 0
                if attempt == 2:
                    raise
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/test installs it with apt-get)")
    for attempt in range(3):
        try:
            server = RedisServer(binary)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.close()
