"""Recording of one meeting: every producer of its Router plus the audio bridge's mix.

The Router's tap hands over each producer's RTP as it is forwarded; a producer seen for the
first time becomes a new track titled "<userId>/<video|screen>" (so one that starts late, or
restarts, gets its own track). The audio bridge hands over the encoded mix of everyone once per
20 ms tick. Nothing is decoded or encoded here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .recording import Recording

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
        self._tracks: dict[str, bool] = {}
        self._bridge: Any = None
        router.add_tap(self._on_rtp)

    def _producer(self, producer_id: str) -> Any:
        for producer in self.router.producers.values():
            if producer.id == producer_id:
                return producer
        return None

    def _on_rtp(
        self, producer_id: str, kind: str, mime: str, payload_type: int, clock_rate: int, data: bytes
    ) -> None:
        accepted = self._tracks.get(producer_id)
        if accepted is None:
            producer = self._producer(producer_id)
            title = f"{producer.user_id}/{kind}" if producer is not None else kind
            request = producer.request_keyframe if producer is not None else (lambda: None)
            accepted = self.recording.add_video_track(producer_id, mime, title, request)
            self._tracks[producer_id] = accepted
            if not accepted:
                log.warning("recording skips a track codec=%s producer=%s", mime, producer_id)
        if accepted:
            before = self.recording.bytes_written
            self.recording.feed_rtp(producer_id, data)
            if self.stats is not None:
                self.stats.recorder_bytes += self.recording.bytes_written - before

    def _on_mix(self, payload: bytes, timestamp: int) -> None:
        self.recording.feed_opus(MIX_TRACK, payload, timestamp)
        if self.stats is not None:
            self.stats.recorder_bytes += len(payload)

    def attach_bridge(self, bridge: Any) -> None:
        """Record the bridge's mix (a bridge created after the recording started included)."""
        setter = getattr(bridge, "set_mix_tap", None)
        if setter is None:
            log.warning("audio bridge has no mix tap: recording without audio")
            return
        self._bridge = bridge
        setter(self._on_mix)

    def detach(self) -> None:
        self.router.remove_tap(self._on_rtp)
        if self._bridge is not None:
            self._bridge.set_mix_tap(None)
            self._bridge = None
        self.recording.close()

    async def finalize(self, final_path: str) -> int:
        """Stop feeding, then merge the parts into `final_path` off the event loop."""
        self.detach()
        return await asyncio.to_thread(self.recording.finalize, final_path)
