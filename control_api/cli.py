"""The meeting-sfu command: serve runs the node, token mints a JWT for a user, bench measures."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sqlite3
import sys
import textwrap
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from .auth import TokenAuthority, canonical_uuid, read_secret_file
from .cluster.startup import check_cluster_settings
from .config import ENV_PREFIX, Config, ConfigError, load_config
from .logs import setup_logging
from .preflight import StartupError, bind_error, check_storage

log = logging.getLogger("meeting_sfu")

ENVIRONMENT = f"""\
environment:
  Every setting of the configuration file can be set by a variable
  {ENV_PREFIX}<SECTION>_<KEY> (lists comma-separated), which wins over the file,
  e.g. {ENV_PREFIX}SERVER_PORT=10001 or {ENV_PREFIX}STORAGE_DATA_DIR=/var/lib/meeting-sfu.
  Every key and its default: config.example.toml in the repository."""


def check_private_api() -> None:
    from sfu.aiortc_hooks import check_private_api as check

    check()


def _load(args: argparse.Namespace, warn: Callable[[str], None] | None = None) -> Config:
    config = load_config(args.config, warn=warn)
    if args.data_dir:
        config = config.with_overrides({"storage": {"data_dir": str(Path(args.data_dir).absolute())}})
    return config


def _serve(args: argparse.Namespace) -> int:
    warnings: list[str] = []
    config = _load(args, warnings.append)
    check_cluster_settings(config)
    setup_logging(config.logging.level, config.logging.format)
    for line in warnings:  # logged once logging has its configured format
        log.warning(line)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        log.warning("uvloop unavailable, using asyncio's loop")
        run = asyncio.run
    check_storage(config)
    from .app import create_app

    try:
        check_private_api()
    except RuntimeError as exc:  # the aiortc/aioice private names the media plane needs
        print(f"meeting-sfu: cannot start: {exc}", file=sys.stderr)
        return 3
    try:
        app = create_app(config)
    except OSError as exc:  # what check_storage could not foresee
        raise _data_dir_error(config, exc) from None
    run(_run(app, config))
    return 0


def _data_dir_error(config: Config, exc: OSError | sqlite3.Error) -> StartupError:
    where = getattr(exc, "filename", None) or config.database_path.absolute()
    return StartupError(f"[storage] data_dir: {where}: {getattr(exc, 'strerror', None) or exc}")


async def _run(app, config: Config) -> None:  # noqa: ANN001
    """Serve until SIGINT or SIGTERM, then shut down cleanly (sockets, media, store)."""
    from aiohttp import web

    from .keys import MEDIA
    from .runner import AppRunner
    from .storage import StoreUnavailable

    host, port = config.server.host, config.server.port
    runner = AppRunner(app, access_log=None, handle_signals=False)
    try:
        await runner.setup()  # opens the store (PostgreSQL: connects and migrates)
    except StoreUnavailable as exc:
        setting = "[storage] database_url" if config.storage.database_url else "[storage] data_dir"
        raise StartupError(f"{setting}: {' '.join(str(exc).split())}") from None
    except (OSError, sqlite3.Error) as exc:  # what check_storage could not foresee
        raise _data_dir_error(config, exc) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Bound first (a taken port is one line at once), served once the media workers run,
        # so that a first join does not wait for them.
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.create_server((host, port), family=family, backlog=1024)
        except OSError as exc:
            raise bind_error(host, port, exc) from None
        try:
            await app[MEDIA].start()
        except RuntimeError as exc:
            listener.close()
            raise StartupError(str(exc)) from None
        await web.SockSite(runner, listener).start()
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        demo = f" demo={url}/demo" if config.demo.enabled else ""
        log.info("serving url=%s%s data_dir=%s", url, demo, config.data_path.absolute())
        await stop.wait()
        log.info("shutting down")
    finally:
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
    config = _load(args)
    # Never a new secret here: one the server does not know would mint tokens it answers 401 to.
    where = (config.data_path / "jwt_secret").absolute()
    try:
        secret = config.auth.jwt_secret or read_secret_file(config.data_path)
    except OSError as exc:
        print(f"meeting-sfu token: cannot read {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not secret:
        print(
            f"meeting-sfu token: no JWT secret: [auth] jwt_secret is empty and {where} does not exist"
            " (the server creates it at its first start); point at the server's configuration with"
            " --config FILE or at its data directory with --data-dir DIR",
            file=sys.stderr,
        )
        return 2
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


def _version() -> str:
    try:
        return metadata.version("meeting-sfu")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def _common(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--config", metavar="FILE",
        help="TOML configuration (every key: config.example.toml); relative paths in it are"
        " relative to the file (default: none, the embedded defaults)",
    )
    sub.add_argument(
        "--data-dir", metavar="DIR",
        help="the data directory, instead of [storage] data_dir (default: ./data)",
    )


def _para(text: str) -> str:
    return textwrap.fill(text, 78)


def parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog="meeting-sfu",
        description="A WebRTC media node speaking the Carbonio Meeting API v1.3.1.",
        epilog="Each command has its own --help.\n\n" + ENVIRONMENT,
        formatter_class=formatter,
    )
    top.add_argument("--version", action="version", version=f"meeting-sfu {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="{serve,token,bench}")
    serve = sub.add_parser(
        "serve",
        help="run the media node",
        description=_para("Serve the HTTP API, the /events websocket, /metrics and (unless [demo]"
        " enabled = false) the demo page at /demo, until SIGINT or SIGTERM. With no"
        " configuration: 127.0.0.1:10000, data (SQLite file, generated JWT secret) in ./data."
        " A start-up failure is one line on stderr and exit status 2."),
        epilog=ENVIRONMENT,
        formatter_class=formatter,
    )
    _common(serve)
    serve.set_defaults(func=_serve)
    token = sub.add_parser(
        "token",
        help="print a signed JWT for a user",
        description=_para("Print a JWT (HS256) signed with the server's secret: [auth] jwt_secret, else"
        " the jwt_secret file the server keeps in its data directory. Give the server's own"
        " --config or --data-dir; this command never creates a secret."),
        epilog=ENVIRONMENT,
        formatter_class=formatter,
    )
    _common(token)
    token.add_argument("--user", required=True, type=_user, help="user id, a UUID (required)")
    token.add_argument("--name", help="display name, the name claim (default: none)")
    token.add_argument("--guest", action="store_true", help="mark the user as a guest (default: not)")
    token.add_argument(
        "--room", action="append", type=_room, metavar="ROOM:ROLE",
        help="a room grant, roomUUID:owner or roomUUID:member; repeatable (default: none)",
    )
    token.add_argument(
        "--ttl", type=int, metavar="SECONDS",
        help="lifetime (default: [auth] default_ttl_seconds, 3600)",
    )
    token.set_defaults(func=_token)
    bench = sub.add_parser("bench", help="load generator: meeting-sfu bench --help", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own options (see `meeting-sfu bench --help`)
        return _bench(argparse.Namespace(bench_args=argv[1:]))
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"meeting-sfu: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"meeting-sfu: cannot start: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
