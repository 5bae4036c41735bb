"""Redis unreachable at run time: every operation fails with ClusterUnavailable within a few
seconds (killed or hung, never a hang here), and the layer recovers by itself when Redis is back."""

from __future__ import annotations

import asyncio
import time

import pytest

from control_api.cluster import (
    Audience,
    Claims,
    ClusterUnavailable,
    EventBus,
    NodeRegistry,
    RedisLink,
    Relay,
    Roster,
    SocketDirectory,
)

from .conftest import eventually

TIMEOUT = 1.0  # the link's socket and command timeout (the default is 2 s)


async def _echo(op: str, payload):  # noqa: ANN001, ANN202
    return payload


def _operations(link: RedisLink, registry: NodeRegistry, relay: Relay):  # noqa: ANN202
    claims, roster, sockets = Claims(link), Roster(link), SocketDirectory(link)
    return {
        "refresh": registry.refresh,
        "live": registry.live,
        "least_loaded": registry.least_loaded,
        "dead": registry.dead,
        "claim": lambda: claims.claim("m", "a"),
        "owner": lambda: claims.owner("m"),
        "release": lambda: claims.release("m", "a"),
        "roster": lambda: roster.get("m"),
        "socket add": lambda: sockets.add("q", "u", "a"),
        "socket lookup": lambda: sockets.lookup("q"),
        "relay": lambda: relay.call("b", "x", 1, timeout=5),
    }


@pytest.mark.timeout(90)
async def test_redis_killed_or_hung_fails_fast_then_everything_comes_back(own_redis) -> None:
    opened: list[RedisLink] = []

    def link() -> RedisLink:
        made = RedisLink(own_redis.url, prefix="u:", timeout=TIMEOUT)
        opened.append(made)
        return made

    a_link = link()
    registry = NodeRegistry(a_link, "a", "http://a", refresh_seconds=0.1)
    got_b: list = []
    bus_a = EventBus(a_link, "a", lambda audience, event: None)
    bus_b = EventBus(link(), "b", lambda audience, event: got_b.append(event))
    relay_a, relay_b = Relay(a_link, "a"), Relay(link(), "b")
    try:
        await registry.start()
        for part in (bus_a, bus_b):
            await part.start()
        for relay in (relay_a, relay_b):
            await relay.serve(_echo)
        assert await relay_a.call("b", "x", 1) == 1
        bus_a.publish(Audience.users(["u"]), {"type": "E", "n": 0})
        await eventually(lambda: got_b == [{"type": "E", "n": 0}], 3)
        operations = _operations(a_link, registry, relay_a)

        for outage in ("killed", "paused"):
            if outage == "killed":
                own_redis.kill()  # connections refused from now on
            else:
                own_redis.pause()  # connections accepted by the kernel, never answered
            for name, operation in operations.items():
                started = time.monotonic()
                with pytest.raises(ClusterUnavailable) as failed:
                    await operation()
                took = time.monotonic() - started
                assert took < TIMEOUT + 1.5, (outage, name, took)
                assert failed.value.status == 503 and failed.value.code == "cluster_unavailable"
            bus_a.publish(Audience.users(["u"]), {"type": "E", "n": 1})  # never blocks nor raises
            refreshed = registry.refreshed

            if outage == "killed":
                own_redis.start()  # same port, empty: nothing survived
            else:
                own_redis.resume()
            # The refresh loop writes the entry again, the subscriptions come back, calls work.
            await eventually(lambda r=refreshed: registry.refreshed > r, 5)
            assert [e.node_id for e in await registry.live()] == ["a"]
            await eventually(lambda: all(s.ready.is_set() for s in _subs(bus_a, bus_b, relay_a, relay_b)), 5)
            await eventually(lambda: _relay_works(relay_a), 5)
            got_b.clear()
            bus_a.publish(Audience.users(["u"]), {"type": "E", "n": 2})
            await eventually(lambda: {"type": "E", "n": 2} in got_b, 3)
        assert bus_b.subscription.subscribed >= 3  # once, then once after each outage
    finally:
        if own_redis.proc is not None:
            own_redis.resume()
        for part in (relay_a, relay_b, bus_a, bus_b):
            await part.stop()
        await registry.stop()
        for made in opened:
            await made.close()


def _subs(*parts):  # noqa: ANN002, ANN202
    return [p.subscription for p in parts]


async def _relay_works(relay: Relay) -> bool:
    try:
        return await relay.call("b", "x", 7, timeout=1) == 7
    except ClusterUnavailable:
        return False


async def test_an_unreachable_redis_at_start_does_not_stop_the_node_starting(own_redis) -> None:
    own_redis.kill()
    link = RedisLink(own_redis.url, prefix="s:", timeout=TIMEOUT)
    registry = NodeRegistry(link, "a", "http://a", refresh_seconds=0.1)
    bus = EventBus(link, "a", lambda audience, event: None)
    try:
        started = time.monotonic()
        await registry.start()
        await bus.start(wait=0.2)
        assert time.monotonic() - started < TIMEOUT + 1.5
        assert not bus.subscription.ready.is_set()
        own_redis.start()
        await eventually(lambda: registry.refreshed > 0 and bus.subscription.ready.is_set(), 5)
    finally:
        await bus.stop()
        await registry.stop()
        await link.close()
        await asyncio.sleep(0)
