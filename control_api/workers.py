"""WorkerPool: the media plane as seen from the control plane, one media worker process per core.

Each worker (`python -m media_worker`, spawned with a fresh interpreter, never forked) holds the
meetings pinned to it. A meeting is pinned when it first needs media, to the live worker with the
least load (peer connections, counting those asked for since its last snapshot, then forwarded
packets/s, then meetings), and stays there until it closes. Requests and events cross one
socketpair per worker (`sfu.channel`); the pool keeps the last stats snapshot of each worker and
sums them for /metrics. A worker that dies is restarted; each meeting pinned to it is reported as
`MeetingLost`, so the control plane stops it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from sfu import channel
from sfu.api import (
    NO_OFFER,
    TIMEOUT,
    UNAVAILABLE,
    WORKER_LOST,
    EventQueue,
    MediaError,
    MediaEvent,
    MeetingLost,
    RecordingResult,
    StatsReport,
    StreamKind,
    StreamRef,
    SubscribedStream,
    event_from_wire,
)
from sfu.metrics import MediaStats, retire
from sfu.settings import MediaPlaneSettings

log = logging.getLogger("meeting_sfu.workers")

START_TIMEOUT = 30.0  # seconds for a worker to import aiortc/PyAV and answer "start"
REQUEST_TIMEOUT = 15.0  # seconds for one media request (an SDP answer takes milliseconds)
HUNG_AFTER = 15.0  # seconds without a stats snapshot (sent every second) before a worker is killed
STATS_TIMEOUT = 1.0  # seconds to wait for fresh stats on a scrape (the last ones serve after)
STOP_TIMEOUT = 6.0  # seconds for a worker to close its meetings and exit at shutdown
RESTART_BACKOFF = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)  # seconds before restart n (crash loops)
ASKED_SECONDS = 2.0  # a request that may open a peer connection counts in the load this long
OPENS_CONNECTIONS = frozenset({"publish", "update_subscriptions", "audio_offer"})


def default_worker_count() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Worker:
    """One media worker process and its channel."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.label = str(index)
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.meetings: set[str] = set()
        self.snapshot: dict[str, Any] = {}
        self.packets_per_second = 0.0
        self._last_packets: tuple[float, int] | None = None
        self.ready = False
        self.reader_task: asyncio.Task[None] | None = None
        self.exited = asyncio.Event()
        self.heard_at = time.monotonic()  # last message from the worker
        self.stopping = False  # asked to shut down: its exit is no death
        self._asked: collections.deque[float] = collections.deque(maxlen=4096)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def load(self) -> tuple[int, float, int]:
        """Peer connections (as last reported, plus those asked for since: a burst of meetings
        between two snapshots would otherwise all land on the worker that reported fewest),
        forwarded packets/s, meetings."""
        pcs = sum((self.snapshot.get("peer_connections") or {}).values())
        return (pcs + self.connections_asked(), self.packets_per_second, len(self.meetings))

    def asked_connection(self) -> None:
        """A request that may open a peer connection went to this worker."""
        self._asked.append(time.monotonic())

    def connections_asked(self) -> int:
        """Requests that may have opened a peer connection in the last `ASKED_SECONDS`: about
        two snapshots, by when the worker reports the connection itself (bounded deque)."""
        horizon = time.monotonic() - ASKED_SECONDS
        while self._asked and self._asked[0] < horizon:
            self._asked.popleft()
        return len(self._asked)

    def take_stats(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        out = sum((snapshot.get("rtp_packets_out") or {}).values())
        now = time.monotonic()
        if self._last_packets is not None and now > self._last_packets[0]:
            self.packets_per_second = (out - self._last_packets[1]) / (now - self._last_packets[0])
        self._last_packets = (now, out)


class WorkerPool:
    """MediaService over `count` media worker processes (see module docstring)."""

    def __init__(
        self,
        settings: MediaPlaneSettings,
        count: int = 0,
        *,
        log_level: str = "info",
        log_format: str = "keyvalue",
        hung_after: float = HUNG_AFTER,
    ) -> None:
        self.settings = settings
        self.hung_after = hung_after
        self.count = count if count > 0 else default_worker_count()
        self.log_level = log_level
        self.log_format = log_format
        self.workers = [Worker(i) for i in range(self.count)]
        self.restarts = 0
        self.closed = False
        self._pins: dict[str, Worker] = {}
        self._ids = itertools.count(1)
        self._events = EventQueue()
        self._retired: dict[str, Any] = {}
        self._started: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker (at most once; later calls wait for the first). RuntimeError with
        one line when a worker cannot start (e.g. its UDP port is taken)."""
        if self.closed:
            raise MediaError(UNAVAILABLE, "the media plane is shut down")
        if self._started is None:
            self._started = asyncio.ensure_future(self._start_all())
        started = self._started
        try:
            await asyncio.shield(started)
        except RuntimeError:
            if self._started is started:
                self._started = None  # the next call tries again
            raise

    async def _start_all(self) -> None:
        results = await asyncio.gather(*(self._spawn(w) for w in self.workers), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self._stop_workers()
            raise RuntimeError(str(errors[0]))
        self._background(self._watch_hung())
        log.info("media workers started count=%s pids=%s", self.count, ",".join(str(w.pid) for w in self.workers))

    def _worker_settings(self, worker: Worker) -> MediaPlaneSettings:
        port = self.settings.udp_port + worker.index if self.settings.udp_port else 0
        return replace(self.settings, udp_port=port)

    async def _spawn(self, worker: Worker) -> None:
        parent, child = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "media_worker",
                "--fd",
                str(child.fileno()),
                "--index",
                worker.label,
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        worker.process, worker.writer = process, writer
        worker.pending.clear()
        worker.snapshot = {}
        worker.stopping = False
        worker.exited = asyncio.Event()
        worker.reader_task = asyncio.create_task(self._read(worker, reader))
        try:
            await self._request(
                worker,
                "start",
                {
                    "settings": self._worker_settings(worker).to_wire(),
                    "log_level": self.log_level,
                    "log_format": self.log_format,
                },
                timeout=START_TIMEOUT,
            )
        except MediaError as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            why = "it exited while starting (its error is logged above)" if exc.code == WORKER_LOST else exc.message
            raise RuntimeError(f"media worker {worker.index} did not start: {why}") from None
        worker.heard_at = time.monotonic()
        worker.ready = True

    async def _read(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        """Everything the worker sends, until its end."""
        try:
            while True:
                message = await channel.read_message(reader)
                if message is None:
                    break
                worker.heard_at = time.monotonic()
                if "id" in message:
                    future = worker.pending.pop(message["id"], None)
                    if future is None or future.done():
                        continue
                    if "error" in message:
                        future.set_exception(MediaError.from_wire(message["error"]))
                    else:
                        future.set_result(message.get("result"))
                elif "event" in message:
                    try:
                        self._emit(event_from_wire(message["event"]))
                    except (TypeError, ValueError) as exc:
                        log.error("bad event from worker=%s error=%s", worker.index, exc)
                elif "stats" in message and isinstance(message["stats"], dict):
                    worker.take_stats(message["stats"])
        except channel.ChannelError as exc:
            log.error("media worker channel broken worker=%s error=%s", worker.index, exc)
        except ConnectionError:
            pass  # the worker died: said below, with its exit status
        except Exception:
            log.exception("media worker channel failed worker=%s", worker.index)
        await self._exited(worker)

    async def _exited(self, worker: Worker) -> None:
        process = worker.process
        was_ready, worker.ready = worker.ready, False
        if worker.writer is not None:
            with contextlib.suppress(Exception):
                worker.writer.close()
        code: int | None = None
        if process is not None:
            try:
                code = await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                code = await process.wait()
        worker.exited.set()
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(MediaError(WORKER_LOST, "the media worker holding the meeting stopped"))
        worker.pending.clear()
        if self.closed or worker.stopping or not was_ready:
            return  # shut down, or it never started (whoever started it hears why)
        # The worker died: its meetings are lost, its counters kept, and it comes back.
        self._retired = MediaStats.merged([self._retired, retire(worker.snapshot)]).snapshot()
        worker.snapshot = {}
        worker._last_packets = None
        lost = sorted(worker.meetings)
        worker.meetings.clear()
        for meeting_id in lost:
            self._pins.pop(meeting_id, None)
        log.error(
            "media worker died worker=%s pid=%s exit=%s meetings_lost=%s",
            worker.index, process.pid if process else None, code, len(lost),
        )
        for meeting_id in lost:
            self._emit(MeetingLost(meeting_id, f"media worker {worker.index} exited ({code})"))
        self.restarts += 1
        self._background(self._restart(worker))

    async def _restart(self, worker: Worker) -> None:
        for attempt in itertools.count():
            await asyncio.sleep(RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)])
            if self.closed:
                return
            try:
                await self._spawn(worker)
                log.info("media worker restarted worker=%s pid=%s", worker.index, worker.pid)
                return
            except Exception as exc:
                log.error("media worker restart failed worker=%s error=%s", worker.index, exc)

    async def _watch_hung(self) -> None:
        """A worker that stops sending its stats (stuck in a loop, deadlocked) is killed: it is
        then restarted like one that died, and its meetings stop."""
        while not self.closed:
            await asyncio.sleep(self.hung_after / 3)
            now = time.monotonic()
            for worker in self.workers:
                if worker.ready and now - worker.heard_at > self.hung_after and worker.pid is not None:
                    log.error("media worker hung worker=%s pid=%s silent_s=%.0f: killed",
                              worker.index, worker.pid, now - worker.heard_at)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._started is not None and not self._started.done():
            self._started.cancel()
            with contextlib.suppress(BaseException):
                await self._started
        await self._stop_workers()

    async def _stop_workers(self) -> None:
        async def stop(worker: Worker) -> None:
            worker.stopping = True
            process = worker.process
            if process is None or process.returncode is not None:
                return
            with contextlib.suppress(Exception):
                await self._request(worker, "shutdown", {}, timeout=STOP_TIMEOUT - 1)
            try:
                await asyncio.wait_for(process.wait(), 1.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
                await process.wait()
            if worker.reader_task is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(worker.reader_task, 1.0)

        await asyncio.gather(*(stop(w) for w in self.workers), return_exceptions=True)

    # --- requests ---------------------------------------------------------------------------

    async def _request(
        self, worker: Worker, method: str, args: dict[str, Any], timeout: float = REQUEST_TIMEOUT
    ) -> Any:
        writer = worker.writer
        if writer is None or writer.is_closing() or worker.exited.is_set():
            raise MediaError(WORKER_LOST, "the media worker is not running")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.pending[request_id] = future
        try:
            writer.write(channel.encode({"id": request_id, "method": method, "args": args}))
            await writer.drain()
        except (ConnectionError, RuntimeError):
            worker.pending.pop(request_id, None)
            raise MediaError(WORKER_LOST, "the media worker is not running") from None
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            worker.pending.pop(request_id, None)
            raise MediaError(TIMEOUT, f"the media worker did not answer {method} in {timeout:.0f} s") from None

    async def _pinned(self, meeting_id: str) -> Worker:
        """The meeting's worker, pinning it to the least loaded live worker the first time."""
        worker = self._pins.get(meeting_id)
        if worker is not None and worker.ready:
            return worker
        try:
            await self.start()
        except RuntimeError as exc:
            raise MediaError(UNAVAILABLE, str(exc)) from None
        worker = self._pins.get(meeting_id)  # pinned meanwhile
        if worker is not None and worker.ready:
            return worker
        live = [w for w in self.workers if w.ready]
        if not live:
            raise MediaError(UNAVAILABLE, "no media worker is running (restarting)")
        worker = min(live, key=Worker.load)
        worker.meetings.add(meeting_id)
        self._pins[meeting_id] = worker
        log.info("meeting pinned meeting=%s worker=%s", meeting_id, worker.index)
        return worker

    async def _if_pinned(self, meeting_id: str, method: str, args: dict[str, Any]) -> Any:
        worker = self._pins.get(meeting_id)
        if worker is None:
            return None
        return await self._request(worker, method, args)

    async def _on_pinned(self, meeting_id: str, method: str, args: dict[str, Any]) -> Any:
        worker = await self._pinned(meeting_id)
        if method in OPENS_CONNECTIONS:
            worker.asked_connection()
        return await self._request(worker, method, args)

    # --- events -----------------------------------------------------------------------------

    def _emit(self, event: MediaEvent) -> None:
        self._events.put(event)

    def events(self) -> AsyncIterator[MediaEvent]:
        return aiter(self._events)

    # --- MediaService -----------------------------------------------------------------------

    async def open_meeting(self, meeting_id: str) -> None:
        """Nothing yet: a meeting is pinned when it first needs media (its load is known then)."""

    async def close_meeting(self, meeting_id: str) -> None:
        worker = self._pins.pop(meeting_id, None)
        if worker is None:
            return
        worker.meetings.discard(meeting_id)
        with contextlib.suppress(MediaError):  # a lost worker has closed it already
            await self._request(worker, "close_meeting", {"meeting_id": meeting_id})

    async def remove_participant(self, meeting_id: str, user_id: str) -> None:
        await self._if_pinned(meeting_id, "remove_participant", {"meeting_id": meeting_id, "user_id": user_id})

    async def publish(self, meeting_id: str, user_id: str, kind: StreamKind, offer_sdp: str) -> str:
        args = {"meeting_id": meeting_id, "user_id": user_id, "kind": kind, "sdp": offer_sdp}
        return str(await self._on_pinned(meeting_id, "publish", args))

    async def unpublish(self, meeting_id: str, user_id: str, kind: StreamKind) -> None:
        await self._if_pinned(meeting_id, "unpublish", {"meeting_id": meeting_id, "user_id": user_id, "kind": kind})

    async def update_subscriptions(
        self, meeting_id: str, user_id: str, subscribe: list[StreamRef], unsubscribe: list[StreamRef]
    ) -> str | None:
        args = {
            "meeting_id": meeting_id,
            "user_id": user_id,
            "subscribe": channel.refs_to_wire(subscribe),
            "unsubscribe": channel.refs_to_wire(unsubscribe),
        }
        result = await self._on_pinned(meeting_id, "update_subscriptions", args)
        return None if result is None else str(result)

    async def answer_subscriber(self, meeting_id: str, user_id: str, answer_sdp: str) -> list[SubscribedStream]:
        if meeting_id not in self._pins:
            raise MediaError(NO_OFFER, "no receive connection was offered to this user")
        args = {"meeting_id": meeting_id, "user_id": user_id, "sdp": answer_sdp}
        return channel.streams_from_wire(await self._on_pinned(meeting_id, "answer_subscriber", args))

    async def audio_offer(self, meeting_id: str, user_id: str, offer_sdp: str) -> str:
        args = {"meeting_id": meeting_id, "user_id": user_id, "sdp": offer_sdp}
        return str(await self._on_pinned(meeting_id, "audio_offer", args))

    async def set_audio_enabled(self, meeting_id: str, user_id: str, enabled: bool) -> None:
        args = {"meeting_id": meeting_id, "user_id": user_id, "enabled": enabled}
        await self._on_pinned(meeting_id, "set_audio_enabled", args)

    async def start_recording(self, meeting_id: str, work_path: str) -> None:
        await self._on_pinned(meeting_id, "start_recording", {"meeting_id": meeting_id, "work_path": work_path})

    async def stop_recording(self, meeting_id: str, final_path: str) -> RecordingResult | None:
        args = {"meeting_id": meeting_id, "final_path": final_path}
        result = await self._if_pinned(meeting_id, "stop_recording", args)
        return channel.recording_from_wire(result)

    async def stats_report(self) -> StatsReport:
        """Fresh snapshots of the running workers (the last ones of a slow worker)."""

        async def fresh(worker: Worker) -> None:
            if worker.ready:
                with contextlib.suppress(MediaError):
                    worker.take_stats(await self._request(worker, "stats", {}, timeout=STATS_TIMEOUT))

        await asyncio.gather(*(fresh(w) for w in self.workers))
        return self.last_report()

    def last_report(self) -> StatsReport:
        return StatsReport(
            workers={w.label: w.snapshot for w in self.workers if w.ready},
            retired=self._retired or None,
            restarts=self.restarts,
        )

    def worker_of(self, meeting_id: str) -> int | None:
        worker = self._pins.get(meeting_id)
        return worker.index if worker is not None else None


__all__ = ["WorkerPool", "default_worker_count"]
