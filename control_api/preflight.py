"""What `meeting-sfu serve` checks before it serves: each failure is one line naming the setting.

A data directory that cannot be written, or a database that opens read-only, would otherwise
show up as a traceback at start-up or as 500s at the first write; a port already taken as an
OSError after the server said it was serving.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import tempfile
from pathlib import Path

from .config import Config


class StartupError(Exception):
    """The node cannot start; the message names the setting and the cause, in one line."""


def check_storage(config: Config) -> None:
    """The data directory (and the recordings') exist or can be made, and can be written; the
    database opens for writing."""
    _writable_dir(config.data_path, "[storage] data_dir")
    if config.recording.dir:
        _writable_dir(config.recording_path, "[recording] dir")
    if config.storage.database_url:
        return  # PostgreSQL: connected (and migrated) when the app starts
    db = config.database_path.absolute()
    try:
        conn = sqlite3.connect(db, timeout=5, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            # A write, rolled back: fails on a file that opened read-only (or is no database).
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StartupError(f"[storage] data_dir: database {db}: {exc}") from None


def _writable_dir(path: Path, setting: str) -> None:
    path = path.absolute()
    if path.exists() and not path.is_dir():
        raise StartupError(f"{setting} {path}: not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"{setting} {path}: cannot be created: {exc.strerror or exc}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(f"{setting} {path}: cannot be written: {exc.strerror or exc}") from None


def bind_error(host: str, port: int, exc: OSError) -> StartupError:
    """The one line for a listening socket that could not be opened."""
    if isinstance(exc, socket.gaierror):
        return StartupError(f"[server] host {host!r}: cannot be resolved: {exc.strerror or exc}")
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"[server] port {port}: address {host}:{port} is already in use")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"[server] host {host}: not an address of this machine")
    if exc.errno == errno.EACCES:
        return StartupError(f"[server] port {port}: permission denied (ports below 1024 need privileges)")
    return StartupError(f"[server] host/port {host}:{port}: {exc.strerror or exc}")
