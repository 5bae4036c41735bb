"""Router: the media of one meeting. Owns its Producers and SubscriberTransports (and through
them every Consumer) and closes them in cascade when a participant leaves, a PC drops, or the
meeting closes. Reports to the control plane through one listener callback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from . import aiortc_hooks as hooks
from .api import (
    MediaError,
    MediaEvent,
    PeerClosed,
    ProducerStateChanged,
    StreamKind,
    StreamRef,
    SubscribedStream,
    SubscriberOffer,
)
from .metrics import MediaStats
from .producer import Producer, choose_codec, parse_offer
from .simulcast import SimulcastProducer
from .simulcast_sdp import parse_simulcast
from .transport import SubscriberTransport

log = logging.getLogger("meeting_sfu.sfu.router")

# tap(producer_id, kind, codec mime type, payload type, clock rate, raw RTP bytes)
Tap = Callable[[str, StreamKind, str, int, int, bytes], None]


class Router:
    """One meeting's media plane (see module docstring)."""

    def __init__(
        self,
        meeting_id: str,
        emit: Callable[[MediaEvent], None],
        stats: MediaStats | None = None,
        max_video_bitrate: int = 2_500_000,
        max_screen_bitrate: int = 2_500_000,
    ) -> None:
        self.meeting_id = meeting_id
        self.max_bitrate: dict[str, int] = {"video": max_video_bitrate, "screen": max_screen_bitrate}
        self.stats = stats if stats is not None else MediaStats()
        self.producers: dict[tuple[str, StreamKind], Producer] = {}
        self.subscribers: dict[str, SubscriberTransport] = {}
        self.closed = False
        self._emit = emit
        self._taps: list[Tap] = []
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()

    # --- taps (for a recorder) --------------------------------------------------------------

    def add_tap(self, tap: Tap) -> None:
        """Receive every producer's RTP (after RTX unwrapping) from now on."""
        if tap not in self._taps:
            self._taps.append(tap)

    def remove_tap(self, tap: Tap) -> None:
        if tap in self._taps:
            self._taps.remove(tap)

    # --- publishers -------------------------------------------------------------------------

    def _lock(self, user_id: str, what: str) -> asyncio.Lock:
        key = (user_id, what)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def publish(self, user_id: str, kind: StreamKind, offer_sdp: str) -> str:
        """Answer a publisher's sendonly offer: a new Producer, or a renegotiation."""
        self._check_open()
        description, parsed = parse_offer(offer_sdp)
        index, codec = choose_codec(parsed)
        simulcast = parse_simulcast(description.sdp, index)
        if simulcast is not None:
            hooks.enable_rid_extensions()  # process-wide, idempotent
        async with self._lock(user_id, kind):
            self._check_open()
            producer = self.producers.get((user_id, kind))
            if producer is not None and not producer.closed:
                same_layers = (
                    isinstance(producer, SimulcastProducer)
                    and simulcast is not None
                    and producer.offer.rids == simulcast.rids
                ) or (not isinstance(producer, SimulcastProducer) and simulcast is None)
                if producer.codec.key == codec.key and same_layers:
                    if isinstance(producer, SimulcastProducer) and simulcast is not None:
                        producer.set_offer(simulcast)
                    return await producer.renegotiate(description, parsed, index, codec)
                # Another codec or other layers: subscribers' m-lines cannot follow, start over.
                await self._end_producer(producer, announce=False)
            args = (self.meeting_id, user_id, kind, codec, self._taps)
            callbacks = {
                "on_active": self._producer_active,
                "on_peer_lost": self._producer_peer_lost,
                "stats": self.stats,
            }
            if simulcast is not None:
                producer = SimulcastProducer(*args, offer=simulcast, **callbacks)
            else:
                producer = Producer(*args, **callbacks)  # type: ignore[arg-type]
            producer.max_bitrate = self.max_bitrate.get(kind, 2_500_000)
            try:
                answer = await producer.answer(description, index, codec)
            except BaseException:
                await producer.close()
                raise
            if self.closed:
                await producer.close()
                raise MediaError("closed", "the meeting media is closed")
            self.producers[(user_id, kind)] = producer
            log.info("producer opened meeting=%s user=%s kind=%s codec=%s",
                     self.meeting_id, user_id, kind, codec.mime_type)
            return answer

    async def unpublish(self, user_id: str, kind: StreamKind) -> None:
        producer = self.producers.get((user_id, kind))
        if producer is not None:
            await self._end_producer(producer, announce=True)

    async def _end_producer(self, producer: Producer, *, announce: bool) -> None:
        if self.producers.get((producer.user_id, producer.kind)) is producer:
            del self.producers[(producer.user_id, producer.kind)]
        was_closed = producer.closed
        await producer.close()  # consumers end: their subscribers get a re-offer
        if announce and not was_closed:
            self._send(
                ProducerStateChanged(self.meeting_id, producer.user_id, producer.kind, False)
            )
        log.info("producer closed meeting=%s user=%s kind=%s", self.meeting_id, producer.user_id,
                 producer.kind)

    def _producer_active(self, producer: Producer) -> None:
        self._send(ProducerStateChanged(self.meeting_id, producer.user_id, producer.kind, True))

    def _producer_peer_lost(self, producer: Producer) -> None:
        if producer.closed or self.closed:
            return
        self._send(PeerClosed(self.meeting_id, producer.user_id, producer.kind))
        self._spawn(self._end_producer(producer, announce=True))

    # --- subscribers ------------------------------------------------------------------------

    async def update_subscriptions(
        self, user_id: str, subscribe: list[StreamRef], unsubscribe: list[StreamRef]
    ) -> str | None:
        self._check_open()
        async with self._lock(user_id, "subscriber"):
            self._check_open()
            wanted = []
            qualities: dict[str, str] = {}
            for ref in subscribe:
                producer = self.producers.get((ref.user_id, ref.kind))
                if producer is None or producer.closed or ref.user_id == user_id:
                    continue  # not published (or his own): skipped, as the API says
                if producer not in wanted:
                    wanted.append(producer)
                if ref.quality is not None:
                    qualities[producer.id] = ref.quality
            gone = [(ref.user_id, ref.kind) for ref in unsubscribe]
            transport = self.subscribers.get(user_id)
            if transport is None or transport.closed:
                if not wanted:
                    return None
                transport = SubscriberTransport(
                    self.meeting_id,
                    user_id,
                    self._subscriber_offer,
                    self._subscriber_peer_lost,
                    self.stats,
                )
                self.subscribers[user_id] = transport
            return await transport.update(wanted, gone, qualities)

    async def answer_subscriber(self, user_id: str, answer_sdp: str) -> list[SubscribedStream]:
        self._check_open()
        transport = self.subscribers.get(user_id)
        if transport is None:
            raise MediaError("no_offer", "no receive connection was offered to this user")
        return await transport.apply_answer(answer_sdp)

    def _subscriber_offer(self, transport: SubscriberTransport, sdp: str) -> None:
        if self.subscribers.get(transport.user_id) is transport:
            self._send(SubscriberOffer(self.meeting_id, transport.user_id, sdp))

    def _subscriber_peer_lost(self, transport: SubscriberTransport) -> None:
        if transport.closed or self.closed:
            return
        if self.subscribers.get(transport.user_id) is transport:
            del self.subscribers[transport.user_id]
        self._send(PeerClosed(self.meeting_id, transport.user_id, "subscriber"))
        self._spawn(transport.close())

    # --- participants and meeting -----------------------------------------------------------

    async def remove_participant(self, user_id: str) -> None:
        """Close the user's producers (announced) and his receive PC."""
        for (uid, _kind), producer in list(self.producers.items()):
            if uid == user_id:
                await self._end_producer(producer, announce=True)
        transport = self.subscribers.pop(user_id, None)
        if transport is not None:
            await transport.close()
        for key in [k for k in self._locks if k[0] == user_id]:
            if not self._locks[key].locked():
                del self._locks[key]

    async def close(self) -> None:
        """Close everything of the meeting; no events are sent for what closes."""
        if self.closed:
            return
        self.closed = True
        producers = list(self.producers.values())
        transports = list(self.subscribers.values())
        self.producers.clear()
        self.subscribers.clear()
        self._taps.clear()
        for transport in transports:
            await transport.close()
        for producer in producers:
            await producer.close()
        if self._background:
            # Let closes already under way finish (cancelling aiortc's close midway breaks it).
            await asyncio.wait(list(self._background), timeout=5)

    # --- helpers ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise MediaError("closed", "the meeting media is closed")

    def _send(self, event: MediaEvent) -> None:
        try:
            self._emit(event)
        except Exception:  # the listener's failure must not break the media plane
            log.exception("media listener failed event=%r", event)

    def _spawn(self, coro) -> None:  # noqa: ANN001
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def counts(self) -> dict[str, int]:
        consumers = sum(len(t.consumers) for t in self.subscribers.values())
        return {"producers": len(self.producers), "subscribers": len(self.subscribers),
                "consumers": consumers}


__all__ = ["Router", "Tap"]
