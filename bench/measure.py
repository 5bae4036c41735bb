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

import aiohttp

from .aggregate import aggregate, rounded
from .meetings import create_meetings, make_authority
from .procfs import host_cpu, proc_cpu, proc_rss_mb
from .progress import Progress
from .protocol import Command, Fatal, Marked, Ready, Result, WorkerSettings
from .server_process import Cluster, ServerProcess
from .workers import Workers


@dataclass
class Target:
    """The server measured: started here (`process`) or given by --url."""

    base_url: str
    secret: str
    pid: int | None
    process: ServerProcess | None = None
    cluster: Cluster | None = None  # --nodes > 1: every node's URL and PID are the cluster's

    @property
    def pids(self) -> list[int]:
        if self.cluster is not None:
            return self.cluster.pids
        return [self.pid] if self.pid else []


@dataclass
class Window:
    """What was sampled from outside the server over the measuring window."""

    seconds: float
    cpu_user_s: float | None  # server CPU seconds in the window (None: no PID to read)
    cpu_system_s: float | None
    host_busy_cores: float
    rss_mb: float | None
    rss_peak_mb: float | None
    node_cpu_s: list[float] | None = None  # each server process tree's CPU seconds in the window


async def start_target(options: argparse.Namespace, kind: str, label: str, progress: Progress) -> Target:
    if kind == "sfu" and options.url:
        if not options.token_secret:
            raise SystemExit("--url needs --token-secret (the server's [auth] jwt_secret)")
        return Target(options.url.rstrip("/"), options.token_secret, options.server_pid)
    if kind == "sfu" and getattr(options, "nodes", 1) > 1:
        cluster = Cluster(options.nodes, options.bitrate)
        progress.show(f"{label}: starting {options.nodes} nodes (pids {' '.join(map(str, cluster.pids))})")
        try:
            await cluster.wait_ready()
        except BaseException:  # never returned, so never stopped by the caller
            cluster.stop()
            raise
        return Target(cluster.urls[0], cluster.secret, None, cluster=cluster)
    server = ServerProcess(kind, options.bitrate)
    progress.show(f"{label}: starting the server (pid {server.pid})")
    try:
        await server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return Target(server.url, server.secret, server.pid, server)


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


def _cpu(pids: list[int]) -> list[tuple[float, float]]:
    return [proc_cpu(pid) for pid in pids]


async def measure(pids: list[int], duration: float, label: str, progress: Progress) -> Window:
    """The server's CPU over the window: the sum over every server process tree in `pids` (one,
    or each node of a cluster)."""
    host0 = host_cpu()
    cpu0, t0 = _cpu(pids), time.monotonic()
    end = t0 + duration
    while time.monotonic() < end:
        now = time.monotonic()
        extra = ""
        if pids and now > t0 + 0.5:
            used = sum(u + s - u0 - s0 for (u, s), (u0, s0) in zip(_cpu(pids), cpu0, strict=True))
            extra = f"server {used / (now - t0):.2f} cores"
        progress.bar(f"{label}: measuring", now - t0, duration, extra)
        await asyncio.sleep(min(0.5, max(0.0, end - now)))
    cpu1, t1 = _cpu(pids), time.monotonic()
    host1 = host_cpu()
    rss = hwm = None
    for pid in pids:
        r, h = proc_rss_mb(pid)
        rss = None if r is None else (rss or 0.0) + r
        hwm = None if h is None else (hwm or 0.0) + h
    busy = (host1[0] - host0[0]) / max(1, host1[1] - host0[1]) * (os.cpu_count() or 1)
    deltas = [(u1 - u0, s1 - s0) for (u0, s0), (u1, s1) in zip(cpu0, cpu1, strict=True)]
    return Window(
        seconds=t1 - t0,
        cpu_user_s=sum(d[0] for d in deltas) if pids else None,
        cpu_system_s=sum(d[1] for d in deltas) if pids else None,
        host_busy_cores=busy,
        rss_mb=rss,
        rss_peak_mb=hwm,
        node_cpu_s=[u + s for u, s in deltas],
    )


async def packets_out(urls: list[str]) -> list[float | None]:
    """Each node's RTP packets sent so far (every kind), from its /metrics; None where it did
    not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    async def one(http: aiohttp.ClientSession, url: str) -> float | None:
        try:
            async with http.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                text = await r.text()
        except (TimeoutError, aiohttp.ClientError):
            return None
        total = 0.0
        for family in text_string_to_metric_families(text):
            if family.name == "meeting_sfu_rtp_packets":
                total += sum(
                    x.value for x in family.samples if x.name.endswith("_total") and x.labels.get("direction") == "out"
                )
        return total

    async with aiohttp.ClientSession() as http:
        return list(await asyncio.gather(*(one(http, url) for url in urls)))


async def owner_url(cluster: Cluster) -> Any:
    """meeting id -> the HTTP address of the node that owns it, as the cluster's Redis says."""

    async def find(meeting_id: str) -> str:
        async with cluster.link() as (claims, registry):
            owner = await claims.owner(meeting_id)
            entry = await registry.get(owner) if owner else None
        if entry is None:
            raise RuntimeError(f"meeting {meeting_id} started but no live node owns it (owner {owner!r})")
        return entry.address

    return find


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
        cluster = target.cluster
        specs = await create_meetings(
            target.base_url, make_authority(target.secret), options.meetings, options.publishers,
            subscribers, options,
            urls=cluster.urls if cluster else None,
            owner_url=await owner_url(cluster) if cluster else None,
        )
        if cluster is not None:
            result["nodes"] = cluster.n
            result["cluster"] = cluster_record(cluster, specs)
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
        sent0 = await packets_out(cluster.urls) if cluster else []
        window = await measure(target.pids, options.duration, label, progress)
        sent1 = await packets_out(cluster.urls) if cluster else []
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
        if cluster is not None:
            per_node = zip(result["cluster"]["nodes"], window.node_cpu_s or [], sent0, sent1, strict=True)
            for node, cpu_s, a, b in per_node:
                node["cpu_cores"] = rounded(cpu_s / window.seconds, 3)
                node["rtp_out_pps"] = rounded((b - a) / window.seconds, 1) if a is not None and b is not None else None
        result["setup_errors"] = errors
        result["load_after"] = list(os.getloadavg())
        return result
    finally:
        progress.done()
        if workers is not None:
            await workers.stop()
        if target is not None and target.process is not None:
            target.process.stop()
        if target is not None and target.cluster is not None:
            target.cluster.stop()
            # What each node logged (warnings and errors: the nodes log at warning) up to its stop
            # (the last MB of it).
            for node, process in zip(result.get("cluster", {}).get("nodes", []), target.cluster.nodes, strict=False):
                lines = process.last_log.splitlines()
                node["log_lines"] = len(lines)
                node["log_tail"] = lines[-10:]


def cluster_record(cluster: Cluster, specs: list[Any]) -> dict[str, Any]:
    """Each node (id, URL, PID, data directory, the meetings its clients call), and the PIDs and
    directories of the cluster's Redis and PostgreSQL: a report says where every meeting ran, and
    a test can check that every process is gone afterwards."""
    meetings: dict[str, set[str]] = {url: set() for url in cluster.urls}
    for spec in specs:
        meetings.setdefault(spec.base_url, set()).add(spec.meeting_id)
    assert cluster.redis is not None and cluster.postgres is not None
    return {
        "nodes": [
            {
                "node_id": node_id,
                "url": node.url,
                "pid": node.pid,
                "dir": str(node.dir),
                "meetings": len(meetings.get(node.url, ())),
            }
            for node_id, node in zip(cluster.node_ids, cluster.nodes, strict=True)
        ],
        "services": cluster.service_pids(),
        "service_dirs": [str(cluster.redis.root), str(cluster.postgres.root)],
    }
