"""The recorder's writer thread: one recording's depacketising, muxing and flushing run here.

The event loop that forwards everyone's media only appends work to a bounded queue (see
`recorder.meeting`); this thread takes it off and does it, so a slow disk delays the recording
and never the forwarding. When the queue is full the loop drops what it would have appended and
counts it; the depacketiser sees the sequence gap and waits for the next keyframe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .recording import Recording

log = logging.getLogger("meeting_sfu.recorder")

MAX_QUEUE = 4096  # work items (RTP packets, mix frames): some seconds of a meeting, a few MB
IDLE_SLEEP = 0.02  # seconds the thread waits for work: the loop never has to wake it, and the
# work comes in batches (fewer hand-overs of the interpreter lock with the event loop)


class RecordingWriter:
    """Runs `(function, *args)` items of `queue` on a thread until `stop()`, then closes the
    recording's parts. The queue's bound is kept by whoever appends (see MeetingRecording)."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.queue: deque[tuple[Any, ...]] = deque()
        self._stopping = False
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        queue = self.queue
        while True:
            try:
                item = queue.popleft()
            except IndexError:
                if self._stopping:
                    break
                time.sleep(IDLE_SLEEP)
                continue
            function: Callable[..., None] = item[0]
            try:
                function(*item[1:])
            except Exception:  # a recorder bug must not stop the thread (nor flood the log)
                self._failures += 1
                if self._failures == 1:
                    log.exception("recorder work failed")
        self.recording.close()

    def stop(self) -> None:
        """Finish what is queued, then close the parts (without waiting: see `join`)."""
        self._stopping = True

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
