"""The wire between the control plane and a media worker: length-prefixed JSON messages over a
local stream (a socketpair), in both directions.

A frame is a 4-byte big-endian length then that many bytes of UTF-8 JSON. Messages:
  request   {"id": n, "method": "publish", "args": {...}}            control plane -> worker
  response  {"id": n, "result": ...} or {"id": n, "error": {...}}     worker -> control plane
  event     {"event": {...}}   (a MediaEvent, see `sfu.api.event_to_wire`)
  stats     {"stats": {...}}   (a snapshot of the worker's counters, sent every second)
Nothing else crosses: media never does (a meeting's PCs all live in one worker).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from .api import RecordingResult, StreamRef, SubscribedStream

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # an SDP is a few kB; a stats snapshot about 3 kB
_LENGTH = struct.Struct(">I")


class ChannelError(Exception):
    """The other side sent something that is not a message (or too large a one)."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise ChannelError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return _LENGTH.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at the end of the stream."""
    try:
        header = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > MAX_MESSAGE_BYTES:
        raise ChannelError(f"frame of {length} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise ChannelError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ChannelError("frame is not a JSON object")
    return message


# --- arguments and results of the MediaService calls, as JSON values --------------------------


def refs_to_wire(refs: list[StreamRef]) -> list[list[str]]:
    return [[r.user_id, r.kind] if r.quality is None else [r.user_id, r.kind, r.quality] for r in refs]


def refs_from_wire(value: Any) -> list[StreamRef]:
    # [user, kind] or [user, kind, quality]
    return [
        StreamRef(str(r[0]), r[1], str(r[2]) if len(r) > 2 and r[2] is not None else None)  # type: ignore[arg-type]
        for r in value
    ]


def streams_to_wire(streams: list[SubscribedStream]) -> list[list[str]]:
    return [[s.user_id, s.kind, s.mid] for s in streams]


def streams_from_wire(value: Any) -> list[SubscribedStream]:
    return [SubscribedStream(str(u), k, str(m)) for u, k, m in value]  # type: ignore[arg-type]


def recording_to_wire(result: RecordingResult | None) -> list[Any] | None:
    return None if result is None else [result.path, result.size_bytes]


def recording_from_wire(value: Any) -> RecordingResult | None:
    return None if value is None else RecordingResult(str(value[0]), int(value[1]))


__all__ = [
    "MAX_MESSAGE_BYTES",
    "ChannelError",
    "encode",
    "read_message",
    "recording_from_wire",
    "recording_to_wire",
    "refs_from_wire",
    "refs_to_wire",
    "streams_from_wire",
    "streams_to_wire",
]
