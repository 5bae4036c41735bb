"""The worker's side of the channel: requests in, answers, events and stats snapshots out."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
from typing import Any

from recorder.meeting import MeetingRecording
from sfu import channel
from sfu.api import INTERNAL, UNAVAILABLE, MediaError, event_to_wire
from sfu.metrics import measure_loop_lag
from sfu.peer import IceSettings, bind_ice, configure_ice, start_ice
from sfu.service import LocalMediaService
from sfu.settings import MediaPlaneSettings

log = logging.getLogger("meeting_sfu.worker")

STATS_INTERVAL = 1.0  # seconds between stats snapshots sent to the control plane
CLOSE_TIMEOUT = 5.0  # seconds a shutdown may take to close every meeting
MAX_BUFFERED_BYTES = 64 * 1024 * 1024  # unsent channel bytes beyond which events are dropped


def _die_with_parent() -> None:
    """Linux: receive SIGKILL when the control plane dies, however it dies (best effort; the end
    of the channel stops the worker too)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class WorkerServer:
    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.service: LocalMediaService | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(channel.encode(message))

    async def serve(self) -> None:
        while True:
            try:
                message = await channel.read_message(self.reader)
            except channel.ChannelError as exc:
                log.error("worker channel broken worker=%s error=%s", self.index, exc)
                break
            if message is None:
                break  # the control plane is gone
            if message.get("method") == "shutdown":
                await self._shutdown()
                self.send({"id": message.get("id"), "result": None})
                await self.writer.drain()
                break
            task = asyncio.create_task(self._handle(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self.service is not None and not self.service.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.service.close(), CLOSE_TIMEOUT)

    async def _handle(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        try:
            result = await self._call(str(message.get("method")), message.get("args") or {})
            self.send({"id": request_id, "result": result})
        except MediaError as exc:
            self.send({"id": request_id, "error": exc.to_wire()})
        except Exception:
            log.exception("media request failed worker=%s method=%s", self.index, message.get("method"))
            self.send({"id": request_id, "error": MediaError(INTERNAL, "internal media error").to_wire()})
        await self.writer.drain()

    async def _call(self, method: str, a: dict[str, Any]) -> Any:
        if method == "start":
            try:
                return await self._start(a)
            except MediaError:
                raise
            except Exception as exc:  # e.g. the UDP port is taken: the operator reads this line
                log.debug("worker start failed", exc_info=True)
                raise MediaError(UNAVAILABLE, str(exc) or exc.__class__.__name__) from None
        service = self.service
        if service is None:
            raise MediaError(INTERNAL, "worker not started")
        if method == "publish":
            return await service.publish(a["meeting_id"], a["user_id"], a["kind"], a["sdp"])
        if method == "unpublish":
            return await service.unpublish(a["meeting_id"], a["user_id"], a["kind"])
        if method == "update_subscriptions":
            return await service.update_subscriptions(
                a["meeting_id"],
                a["user_id"],
                channel.refs_from_wire(a["subscribe"]),
                channel.refs_from_wire(a["unsubscribe"]),
            )
        if method == "answer_subscriber":
            streams = await service.answer_subscriber(a["meeting_id"], a["user_id"], a["sdp"])
            return channel.streams_to_wire(streams)
        if method == "audio_offer":
            return await service.audio_offer(a["meeting_id"], a["user_id"], a["sdp"])
        if method == "set_audio_enabled":
            return await service.set_audio_enabled(a["meeting_id"], a["user_id"], bool(a["enabled"]))
        if method == "open_meeting":
            return await service.open_meeting(a["meeting_id"])
        if method == "close_meeting":
            return await service.close_meeting(a["meeting_id"])
        if method == "remove_participant":
            return await service.remove_participant(a["meeting_id"], a["user_id"])
        if method == "start_recording":
            return await service.start_recording(a["meeting_id"], a["work_path"])
        if method == "stop_recording":
            return channel.recording_to_wire(await service.stop_recording(a["meeting_id"], a["final_path"]))
        if method == "stats":
            return service.snapshot()
        raise MediaError(INTERNAL, f"unknown method {method!r}")

    async def _start(self, a: dict[str, Any]) -> dict[str, Any]:
        if self.service is not None:
            raise MediaError(INTERNAL, "worker already started")
        settings = MediaPlaneSettings.from_wire(a["settings"])
        _setup_logging(str(a.get("log_level") or "info"), str(a.get("log_format") or "keyvalue"))
        configure_ice(
            IceSettings(
                addresses=settings.ice_addresses, public_ip=settings.public_ip or None, udp_port=settings.udp_port
            )
        )
        bind_ice()  # a taken [media] udp_port is refused here, in one line
        sockets = await start_ice()
        self.service = LocalMediaService(settings, recorder_factory=MeetingRecording, event_sink=self._send_event)
        self._spawn(self._send_stats())
        self._spawn(measure_loop_lag(self.service.stats))
        log.info(
            "media worker ready worker=%s pid=%s udp=%s",
            self.index, os.getpid(), ",".join(f"{a}:{p}" for a, p in sockets),
        )
        return {"pid": os.getpid(), "udp": [list(s) for s in sockets]}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_event(self, event: Any) -> None:
        """Written at once, in the order of the media plane's work: an event a request caused
        is on the channel before that request's answer (which is written when it returns)."""
        buffered = self.writer.transport.get_write_buffer_size() if not self.writer.is_closing() else 0
        if buffered > MAX_BUFFERED_BYTES:  # the control plane stopped reading: it is stuck or gone
            log.error("media event dropped (channel full) worker=%s event=%s", self.index, type(event).__name__)
            return
        self.send({"event": event_to_wire(event)})

    async def _send_stats(self) -> None:
        assert self.service is not None
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            self.send({"stats": self.service.snapshot()})
            await self.writer.drain()


def _setup_logging(level: str, fmt: str) -> None:
    try:
        from control_api.logs import setup_logging

        setup_logging(level, fmt)
    except Exception:  # a bad level was refused by the control plane already; stay quiet
        logging.basicConfig(level=logging.INFO)


async def _main(fd: int, index: int) -> int:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    server = WorkerServer(index, reader, writer)
    try:
        await server.serve()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
    return 0


def run(fd: int, index: int) -> int:
    _die_with_parent()
    # SIGINT goes to the whole process group (Ctrl-C): the control plane decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        return uvloop.run(_main(fd, index))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(_main(fd, index))
