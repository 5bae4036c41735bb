"""What the bench and its client processes say to each other, over two multiprocessing queues.

The parent sends each worker a `Command`; a worker answers with the reports below. Every
message is a small picklable dataclass (the workers are spawned, not forked).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Command(enum.Enum):
    PUBLISHERS = "publishers"  # set up every publisher client (each answers Ready)
    SUBSCRIBERS = "subscribers"  # then every subscriber client
    MARK = "mark"  # the measuring window starts: clear and snapshot (answers Marked)
    END = "end"  # the window ends: snapshot and send everything seen (answers Result)
    STOP = "stop"  # close every client and exit (answers Stopped)


@dataclass(frozen=True)
class WorkerSettings:
    """How each client of a worker is made."""

    bitrate: int
    width: int
    height: int
    fps: int
    timeout: float  # per client set-up, s
    concurrency: int  # client set-ups at once
    replay: bool = False  # publishers replay a clip encoded once (at `bitrate`) instead of encoding
    # > 0: publishers and decoding subscribers get a process of their own, and each process of
    # light subscribers reads its sockets every `batch_ms` in the window instead of per datagram
    batch_ms: float = 0.0


@dataclass(frozen=True)
class Ready:
    """One client finished its set-up; `error` is None when it succeeded."""

    worker: int
    role: str
    error: str | None


@dataclass(frozen=True)
class Marked:
    worker: int


@dataclass(frozen=True)
class Result:
    """What each client of a worker saw in the window (dicts as bench/aggregate.py reads
    them), and the CPU seconds the worker used."""

    worker: int
    clients: list[dict[str, Any]] = field(default_factory=list)
    cpu_s: float = 0.0


@dataclass(frozen=True)
class Stopped:
    worker: int


@dataclass(frozen=True)
class Fatal:
    """The worker died; the run fails with this."""

    worker: int
    error: str


Report = Ready | Marked | Result | Stopped | Fatal
