"""The `meeting-sfu` command: `serve` runs the node, `token` mints a JWT for a user."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time

from .auth import TokenAuthority, canonical_uuid, load_or_create_secret
from .config import ConfigError, load_config


class KeyValueFormatter(logging.Formatter):
    """One line per event: time, level, logger, message (key=value pairs by convention)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"ts={stamp}Z level={record.levelname.lower()} logger={record.name} msg={record.getMessage()!r}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _serve(args: argparse.Namespace) -> int:
    from .app import create_app

    config = load_config(args.config)
    if config.storage.database_url:
        # control_api/storage has the PostgreSQL store; the domain moves onto it next (issue 11).
        raise ConfigError("[storage] database_url: PostgreSQL is not served yet; leave it empty for SQLite")
    setup_logging(config.logging.level, config.logging.format)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        logging.getLogger("meeting_sfu").warning("uvloop unavailable, using asyncio's loop")
        run = asyncio.run
    try:
        app = create_app(config)
    except RuntimeError as exc:  # e.g. the aiortc private API check at start-up
        print(f"meeting-sfu: cannot start: {exc}", file=sys.stderr)
        return 3
    logging.getLogger("meeting_sfu").info(
        "serving host=%s port=%s data_dir=%s", config.server.host, config.server.port, config.data_path
    )
    run(_run(app, config.server.host, config.server.port))
    return 0


async def _run(app, host: str, port: int) -> None:  # noqa: ANN001
    """Serve until SIGINT or SIGTERM, then shut down cleanly (sockets, media, store)."""
    from aiohttp import web

    from .runner import AppRunner

    runner = AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        await stop.wait()
    finally:
        logging.getLogger("meeting_sfu").info("shutting down")
        await runner.cleanup()


def _room(value: str) -> tuple[str, str]:
    room, _, role = value.rpartition(":")
    rid = canonical_uuid(room)
    if rid is None or role not in ("owner", "member"):
        raise argparse.ArgumentTypeError("expected <roomUUID>:owner|member")
    return rid, role


def _user(value: str) -> str:
    uid = canonical_uuid(value)
    if uid is None:
        raise argparse.ArgumentTypeError("expected a UUID")
    return uid


def _token(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    secret = load_or_create_secret(config.auth.jwt_secret, config.data_path)
    authority = TokenAuthority(secret, config.auth.leeway_seconds)
    token = authority.mint(
        args.user,
        name=args.name,
        guest=args.guest,
        rooms=dict(args.room or []),
        ttl_seconds=args.ttl or config.auth.default_ttl_seconds,
    )
    print(token)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from bench.load import main as bench_main

    return bench_main(args.bench_args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own options (see `meeting-sfu bench --help`)
        return _bench(argparse.Namespace(bench_args=argv[1:]))
    parser = argparse.ArgumentParser(prog="meeting-sfu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the media node")
    serve.add_argument("--config", help="TOML file (see config.example.toml)")
    serve.set_defaults(func=_serve)
    token = sub.add_parser("token", help="print a signed JWT for a user")
    token.add_argument("--config", help="TOML file (see config.example.toml)")
    token.add_argument("--user", required=True, type=_user, help="user id (UUID)")
    token.add_argument("--name", help="display name")
    token.add_argument("--guest", action="store_true", help="mark the user as a guest")
    token.add_argument(
        "--room", action="append", type=_room, metavar="ROOM:ROLE", help="room grant, repeatable"
    )
    token.add_argument("--ttl", type=int, help="lifetime in seconds")
    token.set_defaults(func=_token)
    bench = sub.add_parser("bench", help="load generator (bench/load.py)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"meeting-sfu: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
