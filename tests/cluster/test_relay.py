"""Relay: a call carried out on another node answers its result, or its error with the same
status, code and message; an absent, slow or overloaded node is ClusterUnavailable, in time."""

from __future__ import annotations

import asyncio
import time

import pytest

from control_api.cluster import ClusterUnavailable, Relay
from control_api.errors import ApiError, not_found


@pytest.fixture
async def nodes(links):
    made: list[Relay] = []

    async def make(node_id: str, handler=None, **options) -> Relay:  # noqa: ANN001
        relay = Relay(links(), node_id, **options)
        made.append(relay)
        await relay.serve(handler or _echo)
        return relay

    yield make
    for relay in made:
        await relay.stop()


async def _echo(op: str, payload):  # noqa: ANN001, ANN202
    if op == "missing":
        raise not_found("no such meeting")
    if op == "bug":
        raise RuntimeError("a bug on the owner")
    if op == "slow":
        await asyncio.sleep(payload)
        return "late"
    return {"op": op, "payload": payload}


async def test_result_and_errors_cross_as_if_local(nodes) -> None:
    a = await nodes("a")
    await nodes("b")
    payload = {"meetingId": "m", "n": [1, 2]}
    assert await a.call("b", "join", payload) == {"op": "join", "payload": payload}
    with pytest.raises(ApiError) as relayed:
        await a.call("b", "missing", None)
    with pytest.raises(ApiError) as local:
        await _echo("missing", None)
    assert (relayed.value.status, relayed.value.code, relayed.value.message) == (404, "not_found", "no such meeting")
    assert (local.value.status, local.value.code, local.value.message) == (404, "not_found", "no such meeting")
    with pytest.raises(ApiError) as bug:  # a bug on the owner is its 500, never a hang
        await a.call("b", "bug", None)
    assert (bug.value.status, bug.value.code) == (500, "internal_error")
    assert await a.call("a", "self", 1) == {"op": "self", "payload": 1}  # to itself, too


async def test_an_absent_node_fails_at_once_and_a_slow_one_at_the_timeout(nodes) -> None:
    a = await nodes("a")
    await nodes("b")
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="not reachable"):
        await a.call("gone", "join", {})
    assert time.monotonic() - started < 1
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="did not answer") as slow:
        await a.call("b", "slow", 2.0, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 1.5
    assert slow.value.status == 503
    assert a._pending == {}  # nothing left waiting


async def test_a_full_queue_is_answered_503_and_in_flight_calls_are_bounded(nodes) -> None:
    a = await nodes("a", max_in_flight=3)
    b = await nodes("b", workers=1, max_queue=1)
    # b runs one and queues one; the third is refused at once, not left to time out.
    calls = [asyncio.create_task(a.call("b", "slow", 0.3, timeout=3)) for _ in range(3)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, ApiError) and r.status == 503 and "overloaded" in r.message]
    assert len(refused) == 1 and results.count("late") == 2, results
    assert b.refused == 1
    # a has 3 slots: a fourth call waits for one, within its own timeout.
    await nodes("c", workers=4)
    blockers = [asyncio.create_task(a.call("c", "slow", 0.5, timeout=3)) for _ in range(3)]
    await asyncio.sleep(0.1)
    with pytest.raises(ClusterUnavailable, match="in flight"):
        await a.call("c", "join", {}, timeout=0.2)
    assert await asyncio.gather(*blockers) == ["late"] * 3


async def test_a_malformed_request_is_dropped_and_the_node_goes_on(nodes, links) -> None:
    a = await nodes("a")
    b = await nodes("b")
    link = links()
    for junk in (b"not json", b"[]", b'{"no": "id"}', b'{"id": "x", "reply": 5}'):
        await link.client.publish(link.keys.rpc("b"), junk)
    assert await a.call("b", "ping", None) == {"op": "ping", "payload": None}
    assert b.refused == 0
