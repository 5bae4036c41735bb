"""The bench's client processes: each runs a share of the clients in its own event loop, so that
the client side is not the bottleneck; the parent drives them with bench/protocol.py messages."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import asdict
from typing import Any

import aiohttp

from .batch_receive import BatchReceiver
from .clients import BenchClient, ClientSpec
from .clip import EncodedClip
from .protocol import Command, Fatal, Marked, Ready, Report, Result, Stopped, WorkerSettings


def _worker_main(
    index: int,
    base_url: str,
    specs: list[dict[str, Any]],
    settings: WorkerSettings,
    commands: Any,
    reports: Any,
) -> None:
    import uvloop

    try:
        if settings.batch_ms > 0 and _light_only(specs):
            # Its sockets are paused and read in batches: that needs the selector loop's
            # pause_reading (uvloop's datagram transport has none).
            asyncio.run(_worker(index, base_url, specs, settings, commands, reports))
        else:  # as the server runs: libuv reads each socket's datagrams in C
            uvloop.run(_worker(index, base_url, specs, settings, commands, reports))
    except Exception as exc:  # pragma: no cover - reported to the parent
        reports.put(Fatal(index, f"{exc.__class__.__name__}: {exc}"))


def _light_only(specs: list[dict[str, Any]]) -> bool:
    return bool(specs) and all(s["role"] == "subscriber" and not s["decode"] for s in specs)


def _client_result(c: BenchClient, start: dict[str, Any], end: dict[str, Any], t0: float) -> dict[str, Any]:
    return {
        "spec": {
            "user_id": c.spec.user_id,
            "role": c.spec.role,
            "decode": c.spec.decode,
            "meeting_id": c.spec.meeting_id,
            "publishers": c.spec.publishers,
            "kernel_count": c.spec.kernel_count,
        },
        "start": start,
        "end": end,
        "ready": c.ready_at is not None,
        "first_frame_s": c.first_frame_delay(),
        "connected_to_first_frame_s": c.first_frame_after_connect(),
        "errors": c.errors[-5:],
        "e2e_ms": list(c.e2e_ms),
        "arrivals": list(c.arrivals),
        "sent": [(k, t) for k, t in c.sent_frames.items() if t >= t0 - 5],
    }


async def _worker(
    index: int,
    base_url: str,
    specs: list[dict[str, Any]],
    settings: WorkerSettings,
    commands: Any,
    reports: Any,
) -> None:
    import aiortc.codecs.vpx

    from sfu.peer import IceSettings, configure_ice

    configure_ice(IceSettings())  # gather on 127.0.0.1 only; the PCs use no STUN server
    # The camera's VP8 encoder starts here (REMB moves it within aiortc's 0.25-1.5 Mbit/s).
    aiortc.codecs.vpx.DEFAULT_BITRATE = settings.bitrate
    loop = asyncio.get_running_loop()
    parent = os.getppid()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    clients = [
        BenchClient(
            ClientSpec(**s),
            base_url,
            http,
            width=settings.width,
            height=settings.height,
            fps=settings.fps,
            timeout=settings.timeout,
            replay_bitrate=settings.bitrate if settings.replay else None,
        )
        for s in specs
    ]
    gate = asyncio.Semaphore(settings.concurrency)
    batching = settings.batch_ms > 0 and _light_only(specs)
    batch = BatchReceiver(settings.batch_ms / 1000) if batching else None
    # A process of light subscribers only counts datagrams: with --batch-ms its sockets leave
    # the event loop once each subscriber is ready and are read in batches (bench/batch_receive.py).
    if batching:
        for c in clients:
            c.batch = batch
    tasks: list[asyncio.Task[None]] = []
    marks: dict[str, Any] = {}

    async def setup(client: BenchClient) -> None:
        if client.spec.join_delay > 0:
            await asyncio.sleep(client.spec.join_delay)  # its batch's turn (--join-batch)
        async with gate:
            try:
                await asyncio.wait_for(client.start(), settings.timeout + 5)
                error = None
            except Exception as exc:
                error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
                if client.errors:
                    error += f" ({client.errors[-1]})"
        reports.put(Ready(index, client.spec.role, error))

    try:
        for _ in range(100_000):  # bounded: the parent stops us long before
            try:
                cmd = await loop.run_in_executor(None, commands.get, True, 1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if cmd in (Command.PUBLISHERS, Command.SUBSCRIBERS):
                role = "publisher" if cmd is Command.PUBLISHERS else "subscriber"
                if settings.replay and any(c.spec.role == role == "publisher" for c in clients):
                    # Encoded once here, before any publisher sends (about a second of CPU).
                    EncodedClip.shared(settings.width, settings.height, settings.fps, settings.bitrate)
                tasks += [asyncio.ensure_future(setup(c)) for c in clients if c.spec.role == role]
            elif cmd is Command.MARK:
                if batch is not None:
                    batch.drain()  # what arrived before the mark counts before it
                for c in clients:
                    c.arrivals.clear()
                    c.sent_frames.clear()
                    c.e2e_ms.clear()
                    c.recording = True
                marks["start"] = {c.spec.user_id: c.snapshot() for c in clients}
                marks["cpu"] = time.process_time()
                reports.put(Marked(index))
            elif cmd is Command.END:
                if batch is not None:
                    batch.drain()  # what arrived before the end counts in the window
                for c in clients:
                    c.recording = False
                end = {c.spec.user_id: c.snapshot() for c in clients}
                cpu = time.process_time() - marks["cpu"]
                t0 = min(s["at"] for s in marks["start"].values()) if clients else time.time()
                out = [_client_result(c, marks["start"][c.spec.user_id], end[c.spec.user_id], t0) for c in clients]
                reports.put(Result(index, out, cpu))
            elif cmd is Command.STOP:
                return
    finally:
        if batch is not None:
            batch.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(
            *(asyncio.wait_for(c.close(), 10) for c in clients), return_exceptions=True
        )
        await http.close()
        reports.put(Stopped(index))


class Workers:
    """The client processes (the specs dealt round-robin) and their command/report queues."""

    def __init__(
        self, base_url: str, specs: list[ClientSpec], processes: int, settings: WorkerSettings
    ) -> None:
        ctx = mp.get_context("spawn")
        self.reports = ctx.Queue()
        self.commands = []
        self.procs = []
        n = max(1, min(processes, len(specs)))
        slices: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        if settings.batch_ms > 0 and n > 1:
            # Publishers and decoding subscribers in process 0 (never napping), light
            # subscribers dealt over the others.
            light = [s for s in specs if s.role == "subscriber" and not s.decode]
            slices[0] = [asdict(s) for s in specs if not (s.role == "subscriber" and not s.decode)]
            for i, spec in enumerate(light):
                slices[1 + i % (n - 1)].append(asdict(spec))
        else:
            for i, spec in enumerate(specs):
                slices[i % n].append(asdict(spec))
        for i, chunk in enumerate(slices):
            q = ctx.Queue()
            p = ctx.Process(
                target=_worker_main,
                args=(i, base_url, chunk, settings, q, self.reports),
                daemon=True,
            )
            p.start()
            self.commands.append(q)
            self.procs.append(p)

    def send(self, cmd: Command) -> None:
        for q in self.commands:
            q.put(cmd)

    async def report(self, timeout: float) -> Report | None:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self.reports.get, True, timeout)
        except queue.Empty:
            return None

    async def stop(self) -> None:
        self.send(Command.STOP)
        deadline = time.monotonic() + 20
        while any(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
            p.join(5)
