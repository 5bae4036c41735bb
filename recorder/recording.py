"""One meeting recording: a Matroska part per track while it runs, one Matroska file at the end.

Every producer (and the audio mix) is written to its own part file as its packets arrive,
without decoding: a track that starts late simply opens a new part. Parts are written in live
mode with short clusters and flushed per packet, so a process killed mid-way leaves part files
that open and decode up to about half a second before the kill. `finalize` (or `recover` after a
crash) muxes every part into one file, one track per part, on the recording's common timeline.
"""

from __future__ import annotations

import errno
import heapq
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av

from .depacketizer import Frame, H264Depacketizer, Vp8Depacketizer, depacketizer_for, parse_rtp

log = logging.getLogger("meeting_sfu.recorder")

MS = Fraction(1, 1000)
PART_OPTIONS = {"live": "1", "cluster_time_limit": "500", "flush_packets": "1"}
MAX_TRACKS = 64


# Where a part's bytes go: None is FFmpeg's own file I/O on the path (unbuffered per packet
# with flush_packets). A stand-in disk for tests (slow, full) is a callable path -> binary file.
open_part_file: Callable[[Path], BinaryIO] | None = None


class DiskFull(Exception):
    """The file system holding the parts is full (ENOSPC): the recording ends there."""


def opus_head(channels: int = 2, pre_skip: int = 312, rate: int = 48000) -> bytes:
    return b"OpusHead" + bytes([1, channels]) + pre_skip.to_bytes(2, "little") + rate.to_bytes(
        4, "little"
    ) + b"\x00\x00\x00"


class _Part:
    """One track's part file; opened lazily at its first usable frame."""

    def __init__(self, path: Path, codec: str, clock_rate: int, start: float, title: str) -> None:
        self.path = path
        self.codec = codec  # "vp8" | "h264" | "opus"
        self.clock_rate = clock_rate
        self.title = title
        self._recording_start = start
        self._container: av.container.OutputContainer | None = None
        self._file: BinaryIO | None = None
        self._stream = None
        self._first_ts: int | None = None
        self._ts_base_ms = 0
        self._last_ts = 0
        self._wraps = 0
        self._last_pts = -1
        self.frames = 0
        self.bytes = 0
        self.failed = False

    def _open(self, frame: Frame) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        target: str | BinaryIO = str(self.path)
        if open_part_file is not None:
            target = self._file = open_part_file(self.path)
        if self.codec == "h264":
            # Matroska wants H.264 parameter sets up front; MPEG-TS carries them in-band.
            container = av.open(target, "w", format="mpegts", container_options={"flush_packets": "1"})
        else:
            container = av.open(target, "w", format="matroska", container_options=PART_OPTIONS)
        container.metadata["title"] = self.title
        if self.codec == "opus":
            stream = container.add_mux_stream("opus", rate=48000)
            pass  # no extradata: decoders assume the OpusHead defaults
        else:
            kwargs = {}
            if frame.width and frame.height:
                kwargs = {"width": frame.width, "height": frame.height}
            stream = container.add_mux_stream(self.codec, **kwargs)
        stream.metadata["title"] = self.title
        # MPEG-TS keeps no track titles: a sidecar does, for the merge.
        self.path.with_suffix(".json").write_text(json.dumps({"title": self.title}))
        self._container = container
        self._stream = stream
        # The part's first frame sits at its arrival time on the recording's timeline.
        self._ts_base_ms = int((time.monotonic() - self._recording_start) * 1000)

    def _pts_ms(self, ts: int) -> int:
        if self._first_ts is None:
            self._first_ts = ts
            self._last_ts = ts
        elif ts < self._last_ts and self._last_ts - ts > 0x80000000:
            self._wraps += 1
        if ts >= self._last_ts or self._last_ts - ts > 0x80000000:
            self._last_ts = ts
        unwrapped = ts + (self._wraps << 32) - self._first_ts
        return self._ts_base_ms + unwrapped * 1000 // self.clock_rate

    def write(self, frame: Frame) -> None:
        if self.failed:
            return
        try:
            if self._container is None:
                self._open(frame)
            pts = self._pts_ms(frame.timestamp)
            if pts <= self._last_pts:
                pts = self._last_pts + 1  # Matroska needs increasing timestamps per track
            self._last_pts = pts
            packet = av.Packet(frame.data)
            packet.stream = self._stream
            packet.pts = packet.dts = pts
            packet.time_base = MS
            packet.is_keyframe = frame.keyframe
            self._container.mux(packet)  # type: ignore[union-attr]
            self.frames += 1
            self.bytes += len(frame.data)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self.failed = True
            if getattr(exc, "errno", None) == errno.ENOSPC:
                raise DiskFull(str(exc)) from None
            log.error("recording part failed path=%s error=%s", self.path, exc)

    def close(self, quiet: bool = False) -> None:
        """Close the part; `quiet`: its failures are expected (the disk is full) and not news."""
        level = logging.DEBUG if quiet else logging.ERROR
        if self._container is not None:
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError) as exc:
                log.log(level, "recording part close failed path=%s error=%s", self.path, exc)
            self._container = None
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.log(level, "recording part close failed path=%s error=%s", self.path, exc)
            self._file = None


class Recording:
    """Receives a meeting's media while recording and produces one Matroska file."""

    def __init__(self, work_dir: str | os.PathLike[str]) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self._parts: dict[str, _Part] = {}
        self._depacketizers: dict[str, Vp8Depacketizer | H264Depacketizer] = {}
        self._keyframe_requests: dict[str, Callable[[], None]] = {}
        self._count = 0
        self.closed = False
        self.disk_full = False
        self.bytes_written = 0

    def _part(self, track_id: str, codec: str, clock_rate: int, title: str) -> _Part | None:
        part = self._parts.get(track_id)
        if part is None:
            if self.closed or self._count >= MAX_TRACKS:
                return None
            self._count += 1
            ext = "ts" if codec == "h264" else "mkv"
            path = self.work_dir / f"{self._count:03d}-{codec}.{ext}"
            part = self._parts[track_id] = _Part(path, codec, clock_rate, self.start, title)
        return part

    def add_video_track(
        self, track_id: str, codec: str, title: str, request_keyframe: Callable[[], None]
    ) -> bool:
        """Announce a producer; returns False for a codec the recorder cannot depacketize."""
        dep = depacketizer_for(codec)
        if dep is None or self.closed:
            return False
        name = "vp8" if isinstance(dep, Vp8Depacketizer) else "h264"
        if self._part(track_id, name, 90000, title) is None:
            return False
        self._depacketizers[track_id] = dep
        self._keyframe_requests[track_id] = request_keyframe
        request_keyframe()
        return True

    def feed_rtp(self, track_id: str, packet: bytes) -> None:
        """A decrypted RTP packet of an announced video track (original header)."""
        dep = self._depacketizers.get(track_id)
        part = self._parts.get(track_id)
        if dep is None or part is None or self.closed:
            return
        view = parse_rtp(packet)
        if view is None:
            return
        for frame in dep.push(view):
            try:
                part.write(frame)
            except DiskFull as exc:
                self._end_disk_full(exc)
                return
            self.bytes_written += len(frame.data)
        if dep.needs_keyframe:
            self._keyframe_requests[track_id]()

    def feed_opus(self, track_id: str, payload: bytes, timestamp: int, title: str = "audio mix") -> None:
        """One Opus packet (48 kHz RTP timestamp) of an audio track such as the mix."""
        if self.closed or not payload:
            return
        part = self._part(track_id, "opus", 48000, title)
        if part is not None:
            try:
                part.write(Frame(payload, timestamp, True))
            except DiskFull as exc:
                self._end_disk_full(exc)
                return
            self.bytes_written += len(payload)

    def _end_disk_full(self, exc: DiskFull) -> None:
        """No room left: stop here. What the parts hold (flushed per packet) stays playable,
        and the merge at the stop makes the recording's file of it."""
        self.disk_full = True
        log.error("recording ended: disk full work_dir=%s error=%s", self.work_dir, exc)
        self.close()

    def end_track(self, track_id: str) -> None:
        """A producer ended: its part is closed (a restart becomes a new track)."""
        part = self._parts.get(track_id)
        self._depacketizers.pop(track_id, None)
        self._keyframe_requests.pop(track_id, None)
        if part is not None:
            part.close()
            # keep it in _parts under a retired key so finalize still merges it
            self._parts[f"{track_id}#ended{self._count}"] = self._parts.pop(track_id)

    def close(self) -> None:
        self.closed = True
        for part in self._parts.values():
            part.close(quiet=self.disk_full)
        self._depacketizers.clear()
        self._keyframe_requests.clear()

    def finalize(self, final_path: str | os.PathLike[str]) -> int:
        """Close the parts and merge them into `final_path`; returns its size in bytes."""
        self.close()
        return merge_parts(self.work_dir, Path(final_path))


def _title(part: Path) -> str | None:
    try:
        return json.loads(part.with_suffix(".json").read_text()).get("title")
    except (OSError, ValueError, AttributeError):
        return None


def part_files(work_dir: Path) -> list[Path]:
    parts = [*work_dir.glob("*.mkv"), *work_dir.glob("*.ts")]
    return sorted(p for p in parts if p.is_file() and p.stat().st_size > 0)


def _interleave(streams: list, out: av.container.OutputContainer) -> None:
    """Copy the packets of every part in timestamp order (a k-way merge, one packet per
    part in memory), so the output is written in order without buffering whole tracks."""
    heap: list[tuple[Fraction, int, av.Packet, object]] = []

    def advance(i: int, it) -> None:
        while True:
            try:
                packet = next(it)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError) as exc:
                log.warning("recording part cut short error=%s", exc)
                return
            if packet.dts is None or packet.size == 0:
                continue
            heapq.heappush(heap, (packet.dts * packet.time_base, i, packet, it))
            return

    for i, (src, s, _dst) in enumerate(streams):
        advance(i, iter(src.demux(s)))
    while heap:
        _, i, packet, it = heapq.heappop(heap)
        packet.stream = streams[i][2]
        out.mux(packet)
        advance(i, it)


def merge_parts(work_dir: Path, final_path: Path) -> int:
    """Mux every readable part of `work_dir` into `final_path` (one track per part), then
    remove the parts; returns the file's size. Unreadable tails of crashed parts are cut where
    they break. With nothing recorded (no part has a packet) no file is made and 0 returned."""
    sources = []
    for path in part_files(work_dir):
        try:
            src = av.open(str(path))
        except (av.error.FFmpegError, OSError) as exc:
            log.warning("recording part unreadable path=%s error=%s", path, exc)
            continue
        if not src.streams:
            src.close()
            continue
        sources.append((path, src))
    size = 0
    try:
        if sources:
            size = _merge(sources, final_path)
    finally:
        for _, src in sources:
            src.close()
    for path in [*work_dir.glob("*.mkv"), *work_dir.glob("*.ts"), *work_dir.glob("*.json")]:
        path.unlink(missing_ok=True)
    try:
        work_dir.rmdir()
    except OSError:
        pass
    return size


def _merge(sources: list, final_path: Path) -> int:
    final_path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file of its own (two merges into one folder never share one), in the final
    # folder so that the rename below is atomic.
    fd, tmp_name = tempfile.mkstemp(prefix=".merge-", suffix=".mkv.partial", dir=final_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o644)  # mkstemp's 0600 would make the recording unreadable to its readers
    try:
        _write(sources, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final_path)
    return final_path.stat().st_size


def _write(sources: list, tmp: Path) -> None:
    out = av.open(str(tmp), "w", format="matroska")
    streams = []
    try:
        for path, src in sources:
            s = src.streams[0]
            if s.type == "audio":
                dst = out.add_mux_stream("opus", rate=48000)
            else:
                kwargs = {}
                if s.codec_context.width and s.codec_context.height:
                    kwargs = {"width": s.codec_context.width, "height": s.codec_context.height}
                dst = out.add_mux_stream(s.codec_context.name, **kwargs)
            title = _title(path) or src.metadata.get("title") or s.metadata.get("title")
            if title:
                dst.metadata["title"] = title
            streams.append((src, s, dst))
        _interleave(streams, out)
    finally:
        out.close()
