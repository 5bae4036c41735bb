"""The wire between the control plane and a worker: frames, and plain data that round-trips."""

from __future__ import annotations

import asyncio
import struct

import pytest

from sfu import channel
from sfu.api import (
    MediaError,
    MeetingLost,
    PeerClosed,
    ProducerStateChanged,
    StreamRef,
    SubscribedStream,
    SubscriberOffer,
    TalkingChanged,
    event_from_wire,
    event_to_wire,
)


def reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_messages_cross_in_order_and_the_end_of_the_stream_is_none():
    data = channel.encode({"id": 1, "method": "publish"}) + channel.encode({"event": {"type": "x"}})
    reader = reader_of(data)
    assert await channel.read_message(reader) == {"id": 1, "method": "publish"}
    assert await channel.read_message(reader) == {"event": {"type": "x"}}
    assert await channel.read_message(reader) is None


async def test_a_truncated_frame_is_the_end_of_the_stream():
    frame = channel.encode({"id": 1})
    assert await channel.read_message(reader_of(frame[:-1])) is None
    assert await channel.read_message(reader_of(frame[:2])) is None


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">I", channel.MAX_MESSAGE_BYTES + 1) + b"{}",
        struct.pack(">I", 3) + b"{x}",
        struct.pack(">I", 2) + b"[]",
        struct.pack(">I", 2) + b"\xff\xfe",
    ],
)
async def test_what_is_not_a_message_is_refused(frame):
    with pytest.raises(channel.ChannelError):
        await channel.read_message(reader_of(frame))


def test_too_large_a_message_is_refused_before_it_is_sent():
    with pytest.raises(channel.ChannelError):
        channel.encode({"sdp": "x" * (channel.MAX_MESSAGE_BYTES + 1)})


@pytest.mark.parametrize(
    "event",
    [
        ProducerStateChanged("m", "u", "screen", True),
        SubscriberOffer("m", "u", "v=0\r\n"),
        TalkingChanged("m", "u", False),
        PeerClosed("m", "u", "subscriber"),
        MeetingLost("m", "media worker 1 exited (-9)"),
    ],
)
def test_events_round_trip(event):
    assert event_from_wire(event_to_wire(event)) == event


@pytest.mark.parametrize("data", [{}, {"type": "Nope"}, {"type": "TalkingChanged"}, [], "x"])
def test_what_is_not_an_event_is_refused(data):
    with pytest.raises((ValueError, TypeError)):
        event_from_wire(data)


def test_errors_and_results_round_trip():
    error = MediaError.from_wire(MediaError("no_offer", "no offer waits").to_wire())
    assert (error.code, error.message) == ("no_offer", "no offer waits")
    assert MediaError.from_wire("garbage").code == "unavailable"
    refs = [StreamRef("a", "video"), StreamRef("b", "screen")]
    assert channel.refs_from_wire(channel.refs_to_wire(refs)) == refs
    streams = [SubscribedStream("a", "video", "0")]
    assert channel.streams_from_wire(channel.streams_to_wire(streams)) == streams
