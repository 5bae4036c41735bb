"""One measurement: one server kind at one size, phase by phase, each bounded in time.

Start (or reach) the server, make the meetings, set up publishers then subscribers in the
client processes, warm up, mark the window, sample the server's CPU through it, collect what the
clients saw, and turn it into the run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from .aggregate import aggregate, rounded
from .meetings import create_meetings, make_authority
from .procfs import host_cpu, proc_cpu, proc_rss_mb
from .progress import Progress
from .protocol import Command, Fatal, Marked, Ready, Result, WorkerSettings
from .server_process import ServerProcess
from .workers import Workers


@dataclass
class Target:
    """The server measured: started here (`process`) or given by --url."""

    base_url: str
    secret: str
    pid: int | None
    process: ServerProcess | None = None


@dataclass
class Window:
    """What was sampled from outside the server over the measuring window."""

    seconds: float
    cpu_user_s: float | None  # server CPU seconds in the window (None: no PID to read)
    cpu_system_s: float | None
    host_busy_cores: float
    rss_mb: float | None
    rss_peak_mb: float | None


async def start_target(options: argparse.Namespace, kind: str, label: str, progress: Progress) -> Target:
    if kind == "sfu" and options.url:
        if not options.token_secret:
            raise SystemExit("--url needs --token-secret (the server's [auth] jwt_secret)")
        return Target(options.url.rstrip("/"), options.token_secret, options.server_pid)
    server = ServerProcess(kind, options.bitrate)
    target = Target(server.url, server.secret, server.pid, server)
    progress.show(f"{label}: starting the server (pid {server.pid})")
    await server.wait_ready()
    return target


async def set_up(
    workers: Workers, cmd: Command, expected: int, label: str, timeout: float, progress: Progress,
    errors: list[str],
) -> int:
    """Sends `cmd` and counts the clients that came up; up to 20 failures go to `errors`."""
    what = cmd.value
    workers.send(cmd)
    ready = answered = 0
    deadline = time.monotonic() + timeout + 30 + expected * 0.5
    while answered < expected and time.monotonic() < deadline:
        progress.show(f"{label}: {what}", f"ready {ready}/{expected}")
        rep = await workers.report(0.5)
        if isinstance(rep, Fatal):
            raise RuntimeError(f"client process {rep.worker} failed: {rep.error}")
        if isinstance(rep, Ready):
            answered += 1
            if rep.error is None:
                ready += 1
            elif len(errors) < 20:
                errors.append(f"{rep.role}: {rep.error}")
    progress.show(f"{label}: {what}", f"ready {ready}/{expected}")
    return ready


async def warm_up(seconds: float, label: str, progress: Progress) -> None:
    warm_end = time.monotonic() + seconds
    while time.monotonic() < warm_end:
        progress.bar(f"{label}: warm-up", seconds - (warm_end - time.monotonic()), seconds)
        await asyncio.sleep(0.25)


async def mark(workers: Workers) -> None:
    """Every worker starts its window (bounded: 20 s per worker at most)."""
    workers.send(Command.MARK)
    marked = 0
    for _ in range(len(workers.procs) * 40):
        if marked == len(workers.procs):
            break
        if isinstance(await workers.report(0.5), Marked):
            marked += 1


async def measure(pid: int | None, duration: float, label: str, progress: Progress) -> Window:
    host0 = host_cpu()
    cpu0, t0 = proc_cpu(pid) if pid else None, time.monotonic()
    end = t0 + duration
    while time.monotonic() < end:
        now = time.monotonic()
        extra = ""
        if cpu0 is not None and now > t0 + 0.5:
            u, s = proc_cpu(pid)
            extra = f"server {(u + s - cpu0[0] - cpu0[1]) / (now - t0):.2f} cores"
        progress.bar(f"{label}: measuring", now - t0, duration, extra)
        await asyncio.sleep(min(0.5, max(0.0, end - now)))
    cpu1, t1 = proc_cpu(pid) if pid else None, time.monotonic()
    host1 = host_cpu()
    rss, hwm = proc_rss_mb(pid) if pid else (None, None)
    busy = (host1[0] - host0[0]) / max(1, host1[1] - host0[1]) * (os.cpu_count() or 1)
    return Window(
        seconds=t1 - t0,
        cpu_user_s=cpu1[0] - cpu0[0] if cpu0 is not None and cpu1 is not None else None,
        cpu_system_s=cpu1[1] - cpu0[1] if cpu0 is not None and cpu1 is not None else None,
        host_busy_cores=busy,
        rss_mb=rss,
        rss_peak_mb=hwm,
    )


async def collect(workers: Workers) -> list[Result]:
    """Every worker's Result for the window (bounded: 60 s per worker at most)."""
    workers.send(Command.END)
    results: list[Result] = []
    for _ in range(len(workers.procs) * 120):
        if len(results) == len(workers.procs):
            break
        rep = await workers.report(0.5)
        if isinstance(rep, Result):
            results.append(rep)
    return results


def server_figures(window: Window, forwarded_pps: float) -> dict[str, Any]:
    """Server CPU in cores, and per forwarded packet."""
    if window.cpu_user_s is None or window.cpu_system_s is None:
        return dict.fromkeys(
            ("server_cpu_cores", "server_cpu_user_cores", "server_cpu_sys_cores", "cpu_us_per_packet")
        )
    user = window.cpu_user_s / window.seconds
    system = window.cpu_system_s / window.seconds
    pkts = forwarded_pps * window.seconds
    return {
        "server_cpu_cores": rounded(user + system, 3),
        "server_cpu_user_cores": rounded(user, 3),
        "server_cpu_sys_cores": rounded(system, 3),
        "cpu_us_per_packet": rounded((user + system) * window.seconds / pkts * 1e6, 1) if pkts else None,
    }


async def run_once(
    options: argparse.Namespace, kind: str, subscribers: int, progress: Progress
) -> dict[str, Any]:
    """One measurement of one server kind at one size; every phase is bounded in time."""
    target: Target | None = None
    workers = None
    label = f"{kind} S={subscribers}"
    result: dict[str, Any] = {
        "server": kind,
        "meetings": options.meetings,
        "publishers": options.publishers,
        "subscribers": subscribers,
        "decoders": min(options.decoders, subscribers),
        "duration_s": options.duration,
        "load_before": list(os.getloadavg()),
    }
    try:
        target = await start_target(options, kind, label, progress)
        result["server_pid"] = target.pid
        specs = await create_meetings(
            target.base_url, make_authority(target.secret), options.meetings, options.publishers,
            subscribers, options,
        )
        n_pub = sum(1 for s in specs if s.role == "publisher")
        processes = options.processes or (1 if len(specs) <= 12 else 2)
        result["client_processes"] = processes
        settings = WorkerSettings(
            bitrate=options.bitrate,
            width=options.width,
            height=options.height,
            fps=options.fps,
            timeout=options.setup_timeout,
            concurrency=options.concurrency,
            replay=options.replay,
            batch_ms=options.batch_ms,
        )
        workers = Workers(target.base_url, specs, processes, settings)
        errors: list[str] = []
        setup_t0 = time.monotonic()
        timeout = options.setup_timeout
        result["publishers_ready"] = await set_up(workers, Command.PUBLISHERS, n_pub, label, timeout, progress, errors)
        if result["publishers_ready"] == 0:
            raise RuntimeError(f"no publisher could publish: {errors[:3]}")
        result["subscribers_ready"] = await set_up(
            workers, Command.SUBSCRIBERS, len(specs) - n_pub, label, timeout, progress, errors
        )
        result["setup_s"] = round(time.monotonic() - setup_t0, 2)
        await warm_up(options.warmup, label, progress)
        await mark(workers)
        window = await measure(target.pid, options.duration, label, progress)
        results = await collect(workers)
        progress.done()
        result.update(aggregate(results, window.seconds))
        result.update(server_figures(window, result["forwarded_pps"]))
        # The load generator's CPU per packet its subscribers received, beside the server's per
        # packet it forwarded: the generator must cost well below the server for a capacity run.
        pps = result["forwarded_pps"]
        cpu = result["client_cpu_cores"]
        result["client_cpu_us_per_packet"] = rounded(cpu / pps * 1e6, 1) if pps and cpu is not None else None
        # The whole machine's busy cores in the window, and what neither the server nor the
        # bench's clients used (other work on a shared machine skews every figure).
        result["host_busy_cores"] = rounded(window.host_busy_cores, 2)
        result["host_other_cores"] = rounded(
            max(0.0, window.host_busy_cores - (result["server_cpu_cores"] or 0) - (result["client_cpu_cores"] or 0)),
            2,
        )
        result["server_rss_mb"] = rounded(window.rss_mb, 1)
        result["server_rss_peak_mb"] = rounded(window.rss_peak_mb, 1)
        result["window_s"] = round(window.seconds, 2)
        result["setup_errors"] = errors
        result["load_after"] = list(os.getloadavg())
        return result
    finally:
        progress.done()
        if workers is not None:
            await workers.stop()
        if target is not None and target.process is not None:
            target.process.stop()
