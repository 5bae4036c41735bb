"""Load generator: N meetings x (P publishers + S subscribers) of synthetic Carbonio web clients
against a server process, measured from outside (server CPU and RSS from /proc, media at the
subscribers), optionally side by side with the naive MediaRelay baseline (bench/baseline.py).

    .venv/bin/meeting-sfu bench --meetings 1 --publishers 1 --sweep 1,5,20 --baseline \\
        --duration 10 --json bench/results/run.json
    .venv/bin/python -m bench.load --url http://127.0.0.1:10000 --token-secret S --server-pid PID

By default the bench starts `meeting-sfu serve` itself (a temp data dir, a free port on
127.0.0.1, a generated JWT secret, all through MEETING_SFU_* variables) and stops it by its PID.

With `--nodes N` (N > 1) it starts a cluster on this machine instead (DESIGN section 9.2): one
redis-server and one PostgreSQL of its own (free loopback ports, temporary directories) and N
`meeting-sfu serve` nodes over them, `[media] workers = 1` each (unless MEETING_SFU_MEDIA_WORKERS
says otherwise), one JWT secret, ports of their own; all stopped by PID at the end. Meeting i is
created and started through node i % N, and every call of its clients goes to the node that
owns it (the cluster places a start on its least loaded node: node i % N here, checked from its
Redis and reported per node): media flows straight to the owner and no call is relayed on the
hot path, so this measures what N nodes carry side by side, not the relay. The server CPU is the
sum over every node's process tree, and each node's RTP packets sent (from its /metrics) and CPU
are reported beside the subscribers' count.
Clients run in `--processes` worker processes; `--decoders` subscribers per meeting decode the
video (decoded fps, end-to-end latency), the others are light (they count RTP at their DTLS
transport), so that the client side is not the bottleneck.

This module is the command line and the sweep; the parts have their own modules: procfs (CPU
and memory from /proc), server_process (the server under test), meetings (set-up through the
API), protocol and workers (the client processes and their messages), measure (one run, phase
by phase), aggregate (figures and ratios), table and readme (the terminal and README tables),
progress (stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from .aggregate import ratios, rss_per_subscriber
from .measure import run_once
from .progress import Progress
from .readme import PATH_OPTIONS, relative_command
from .server_process import ROOT
from .table import table

# --- command line -----------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's default (when it has one to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


EPILOG = """\
environment:
  The server the bench starts gets its settings as MEETING_SFU_* variables (a free
  port on 127.0.0.1, a temporary data directory, a generated JWT secret, ICE on
  127.0.0.1, log level warning); the caller's other MEETING_SFU_* variables reach
  it too. See bench/README.md for every measured field."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meeting-sfu bench",
        description=textwrap.fill(__doc__.split("\n\n")[0].replace("\n", " "), 78),
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--meetings", "-m", type=int, default=1, help="meetings at once")
    p.add_argument("--publishers", "-p", type=int, default=1, help="publishers per meeting")
    p.add_argument("--subscribers", "-s", type=int, default=5, help="subscribers per meeting")
    p.add_argument("--sweep", help="comma-separated subscriber counts, one run each (replaces --subscribers)")
    p.add_argument("--duration", "-d", type=float, default=10.0, help="measuring window, s")
    p.add_argument("--warmup", type=float, default=3.0, help="s between set-up and window")
    p.add_argument(
        "--decoders",
        type=int,
        default=2,
        help="subscribers per meeting that decode video; the others are light",
    )
    p.add_argument(
        "--decoding-meetings",
        type=int,
        help="only the first N meetings have decoding subscribers (default: every meeting)",
    )
    p.add_argument(
        "--replay",
        action="store_true",
        help="publishers replay a clip VP8-encoded once at --bitrate instead of encoding live "
        "(no encoder per publisher; no end-to-end latency)",
    )
    p.add_argument(
        "--batch-ms",
        type=float,
        default=0.0,
        help="> 0: light subscribers get processes of their own that read their sockets every "
        "BATCH_MS ms in the window instead of waking per datagram (publishers and decoding "
        "subscribers in one more process)",
    )
    p.add_argument(
        "--reading",
        type=int,
        metavar="N",
        help="with --batch-ms: only N light subscribers per meeting read and count every packet "
        "(fps, sequence gaps); the kernel drops the others' RTP on arrival and counts it (a socket "
        "filter, /proc/net/udp), their loss being their deficit against the readers of their "
        "meeting (default: every light subscriber reads)",
    )
    p.add_argument(
        "--audio",
        action="store_true",
        help="every client also opens the audio PC (publishers send a tone)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="client processes (0: 1 up to 12 clients, else 2)",
    )
    p.add_argument("--concurrency", type=int, default=8, help="client set-ups at once per process")
    p.add_argument(
        "--join-batch",
        type=int,
        default=0,
        help="subscribers of a meeting join this many at a time, --join-interval apart (0: all at once)",
    )
    p.add_argument("--join-interval", type=float, default=1.0, help="s between two --join-batch batches")
    p.add_argument("--bitrate", type=int, default=1_200_000, help="VP8 start bitrate, bit/s")
    p.add_argument("--width", type=int, default=640, help="video width, pixels")
    p.add_argument("--height", type=int, default=480, help="video height, pixels")
    p.add_argument("--fps", type=int, default=30, help="video frames per second")
    p.add_argument("--setup-timeout", type=float, default=20.0, help="per client, s")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also measure the naive MediaRelay server at each size",
    )
    p.add_argument("--baseline-only", action="store_true", help="measure only the baseline")
    p.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="> 1: a cluster of N nodes on this machine (with a redis-server and a PostgreSQL of its own)",
    )
    p.add_argument("--url", help="a running server (default: meeting-sfu serve is started)")
    p.add_argument("--token-secret", help="the running server's JWT secret (with --url)")
    p.add_argument("--server-pid", type=int, help="the running server's PID, for CPU and RSS")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument(
        "--readme", metavar="FILE", help="write the results table into FILE (e.g. README.md)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


async def run(options: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(x) for x in options.sweep.split(",")] if options.sweep else [options.subscribers]
    kinds = (
        ["baseline"]
        if options.baseline_only
        else (["sfu", "baseline"] if options.baseline else ["sfu"])
    )
    progress = Progress(not options.quiet)
    started = time.time()
    runs = []
    for size in sizes:
        for kind in kinds:
            try:
                runs.append(await run_once(options, kind, size, progress))
            except (RuntimeError, OSError) as exc:
                progress.done()
                print(f"bench: {kind} S={size} failed: {exc}", file=sys.stderr)
                runs.append(
                    {
                        "server": kind,
                        "subscribers": size,
                        "meetings": options.meetings,
                        "publishers": options.publishers,
                        "failed": str(exc),
                    }
                )
    ok = [r for r in runs if "failed" not in r]
    return {
        "bench": "meeting-sfu load",
        "command": portable_command(options.argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "host": {"cpus": os.cpu_count(), "load_at_start": None},
        "settings": {
            "meetings": options.meetings,
            "publishers": options.publishers,
            "nodes": options.nodes,
            "sizes": sizes,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "decoders": options.decoders,
            "decoding_meetings": options.decoding_meetings,
            "reading": options.reading,
            "replay": options.replay,
            "audio": options.audio,
            "bitrate": options.bitrate,
            "video": f"VP8 {options.width}x{options.height} {options.fps} fps",
            "join_batch": options.join_batch,
            "join_interval_s": options.join_interval if options.join_batch else None,
        },
        "runs": runs,
        "ratios": ratios(ok),
        "rss_per_extra_subscriber": rss_per_subscriber(ok),
    }


def portable_command(argv: list[str]) -> list[str]:
    """The command as the report keeps it: --json and --readme paths relative to the repository
    when they lie in it (wherever the caller ran it from), else absolute."""
    out, path_next = [], False
    for arg in argv:
        option, eq, value = arg.partition("=")
        if path_next:
            arg, path_next = str(Path(arg).absolute()), False
        elif option in PATH_OPTIONS and eq:
            arg = f"{option}={Path(value).absolute()}"
        elif arg in PATH_OPTIONS:
            path_next = True
        out.append(arg)
    return relative_command(["meeting-sfu", "bench", *out], ROOT)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parser().parse_args(argv)
    options.argv = argv
    if options.publishers < 1 or options.meetings < 1:
        print("bench: at least one meeting and one publisher", file=sys.stderr)
        return 2
    if options.nodes < 1 or (options.nodes > 1 and (options.url or options.baseline or options.baseline_only)):
        print("bench: --nodes is at least 1, and above 1 goes with neither --url nor the baseline", file=sys.stderr)
        return 2
    if options.reading is not None and (options.reading < 1 or options.batch_ms <= 0):
        print("bench: --reading is at least 1 and goes with --batch-ms", file=sys.stderr)
        return 2
    load = list(os.getloadavg())
    report = asyncio.run(run(options))
    report["host"]["load_at_start"] = load
    ok = [r for r in report["runs"] if "failed" not in r]
    print(table(ok, report["ratios"]))
    for r in report["rss_per_extra_subscriber"]:
        print(f"RSS per extra subscriber, {r['server']} {r['from']} -> {r['to']}: {r['mb']:.3f} MB")
    print(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")
    if options.json:
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    if options.readme:
        from .readme import write

        write(Path(options.readme), [report])
    return 0 if ok and len(ok) == len(report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
