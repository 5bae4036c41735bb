"""Event bus: each event reaches every node with its audience, in order, once per node."""

from __future__ import annotations

import pytest

from control_api.cluster import Audience, EventBus

from .conftest import eventually


@pytest.fixture
async def buses(links):
    made: list[EventBus] = []

    async def make(node_id: str, **options) -> tuple[EventBus, list]:  # noqa: ANN001
        got: list = []
        bus = EventBus(links(), node_id, lambda audience, event: got.append((audience, event)), **options)
        made.append(bus)
        await bus.start()
        assert bus.subscription.ready.is_set()
        return bus, got

    yield make
    for bus in made:
        await bus.stop()


AUDIENCES = [
    Audience.room_members("room", also=["waiting-bob"]),
    Audience.room_owners("room", also_queue="q-bob"),
    Audience.users(["alice", "bob", "alice"]),
    Audience.queue("q-alice"),
    Audience.participants("meeting", ["alice", "carol"]),
]


async def test_every_node_gets_each_event_with_its_audience_in_order_once(buses) -> None:
    a, on_a = await buses("a")
    b, on_b = await buses("b")
    c, on_c = await buses("c")
    events = [{"type": f"MEETING_{i}", "meetingId": "m", "n": i} for i in range(50)]
    for i, event in enumerate(events):
        a.publish(AUDIENCES[i % len(AUDIENCES)], event)
    expected = [(AUDIENCES[i % len(AUDIENCES)], e) for i, e in enumerate(events)]
    assert on_a == expected  # delivered here at once, not again through Redis
    await eventually(lambda: on_b == expected and on_c == expected, 3)
    await a.drain()
    assert (a.sent, a.dropped, b.received) == (50, 0, 50)
    assert AUDIENCES[2].user_ids == ("alice", "bob")
    b.publish(Audience.queue("q"), {"type": "MEETING_X"})
    last = [(Audience.queue("q"), {"type": "MEETING_X"})]
    await eventually(lambda: on_a[-1:] == last and on_c[-1:] == last, 3)
    assert len(on_c) == 51 and len(on_b) == 51 and len(on_a) == 51


async def test_a_full_outbox_drops_and_counts_never_blocks(buses, links) -> None:
    a, on_a = await buses("a", max_outbox=2)
    for i in range(10):  # no await in between: the sender cannot run
        a.publish(Audience.queue("q"), {"type": "E", "n": i})
    assert len(on_a) == 10 and a.dropped == 8
    await a.drain()
    assert a.sent == 2


async def test_malformed_messages_are_dropped(buses, links) -> None:
    b, on_b = await buses("b")
    link = links()
    for junk in (b"junk", b"{}", b'{"to": {"kind": "nobody"}, "event": {}}', b'{"to": 3, "event": {}}'):
        await link.client.publish(link.keys.events, junk)
    a, _ = await buses("a")
    a.publish(Audience.users(["u"]), {"type": "OK"})
    await eventually(lambda: on_b == [(Audience.users(["u"]), {"type": "OK"})], 3)


def test_an_audience_is_plain_data_both_ways() -> None:
    for audience in AUDIENCES:
        assert Audience.from_data(audience.to_data()) == audience
    with pytest.raises(ValueError, match="kind"):
        Audience("everyone")
