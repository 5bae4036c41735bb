"""Recording of one meeting: every producer of its Router plus the audio bridge's mix.

The Router's tap hands over each producer's RTP as it is forwarded; a producer seen for the
first time becomes a new track titled "<userId>/<video|screen>" (so one that starts late, or
restarts, gets its own track). The audio bridge hands over the encoded mix of everyone once per
20 ms tick. Nothing is decoded or encoded here.

None of the recording's work runs on the forwarding path: the taps append it to the writer's
bounded queue (`recorder.writer`), or, when the queue is full, drop it and count it in
`MediaStats.recorder_dropped`. The writer asks for keyframes through the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .depacketizer import depacketizer_for
from .recording import Recording
from .writer import MAX_QUEUE, RecordingWriter

if TYPE_CHECKING:
    from sfu.metrics import MediaStats
    from sfu.router import Router

log = logging.getLogger("meeting_sfu.recorder")

MIX_TRACK = "mix"


class MeetingRecording:
    def __init__(self, router: "Router", work_dir: str, stats: "MediaStats | None" = None) -> None:
        self.router = router
        self.recording = Recording(work_dir)
        self.stats = stats
        self._loop = asyncio.get_running_loop()
        self._writer = RecordingWriter(self.recording)
        self._queue = self._writer.queue
        self._tracks: dict[str, bool] = {}
        self._bridge: Any = None
        self.dropped = 0  # work items refused because the writer was behind
        router.add_tap(self._on_rtp)

    def _producer(self, producer_id: str) -> Any:
        for producer in self.router.producers.values():
            if producer.id == producer_id:
                return producer
        return None

    def _add_track(self, producer_id: str, kind: str, mime: str) -> bool:
        if depacketizer_for(mime) is None:
            log.warning("recording skips a track codec=%s producer=%s", mime, producer_id)
            return False
        producer = self._producer(producer_id)
        title = f"{producer.user_id}/{kind}" if producer is not None else kind
        loop = self._loop

        def request_keyframe() -> None:  # called on the writer thread
            if producer is not None and not loop.is_closed():
                loop.call_soon_threadsafe(producer.request_keyframe)

        # Announcements are few (one per producer): queued even past the bound, never dropped.
        self._queue.append((self.recording.add_video_track, producer_id, mime, title, request_keyframe))
        return True

    def _drop(self) -> None:
        self.dropped += 1
        if self.stats is not None:
            self.stats.recorder_dropped += 1

    def _on_rtp(
        self, producer_id: str, kind: str, mime: str, payload_type: int, clock_rate: int, data: bytes
    ) -> None:
        accepted = self._tracks.get(producer_id)
        if accepted is None:
            accepted = self._tracks[producer_id] = self._add_track(producer_id, kind, mime)
        if accepted and not self.recording.closed:
            queue = self._queue
            if len(queue) < MAX_QUEUE:
                queue.append((self._feed_rtp, producer_id, data))
            else:
                self._drop()

    def _on_mix(self, payload: bytes, timestamp: int) -> None:
        if self.recording.closed:
            return
        queue = self._queue
        if len(queue) < MAX_QUEUE:
            queue.append((self._feed_opus, payload, timestamp))
        else:
            self._drop()

    # --- on the writer thread ----------------------------------------------------------------

    def _feed_rtp(self, producer_id: str, data: bytes) -> None:
        before = self.recording.bytes_written
        self.recording.feed_rtp(producer_id, data)
        if self.stats is not None:  # only this thread adds to it
            self.stats.recorder_bytes += self.recording.bytes_written - before

    def _feed_opus(self, payload: bytes, timestamp: int) -> None:
        before = self.recording.bytes_written
        self.recording.feed_opus(MIX_TRACK, payload, timestamp)
        if self.stats is not None:
            self.stats.recorder_bytes += self.recording.bytes_written - before

    # --- control -----------------------------------------------------------------------------

    def attach_bridge(self, bridge: Any) -> None:
        """Record the bridge's mix (a bridge created after the recording started included)."""
        setter = getattr(bridge, "set_mix_tap", None)
        if setter is None:
            log.warning("audio bridge has no mix tap: recording without audio")
            return
        self._bridge = bridge
        setter(self._on_mix)

    def detach(self) -> None:
        """Stop feeding; the writer finishes what is queued and closes the parts."""
        self.router.remove_tap(self._on_rtp)
        if self._bridge is not None:
            self._bridge.set_mix_tap(None)
            self._bridge = None
        self._writer.stop()

    def _finish(self, final_path: str) -> int:
        self._writer.join()
        return self.recording.finalize(final_path)

    async def finalize(self, final_path: str) -> int:
        """Stop feeding, then let the writer finish and merge the parts into `final_path`, off
        the event loop."""
        self.detach()
        return await asyncio.to_thread(self._finish, final_path)
