"""One node's connection to Redis: bounded waits, no silent retries, and the names of every key.

Every command goes through `RedisLink.run`, which turns a refused connection, a socket timeout or
a Redis that stopped answering into ClusterUnavailable within `timeout` seconds (plus a margin):
redis-py's own retries are off (the default Retry would triple the wait), and a hard
`asyncio.timeout` covers what socket timeouts do not (a pool with no free connection). Nothing is
cached across an outage: the next command opens a fresh connection, so the node recovers by itself
when Redis is back. Scripts are sent by EVALSHA and loaded again after a Redis restart (redis-py's
Script does that on NOSCRIPT).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ClusterUnavailable

T = TypeVar("T")
log = logging.getLogger("meeting_sfu.cluster")

# What "Redis cannot be reached" looks like from redis-py and the OS (BusyLoadingError, a Redis
# still loading after a restart, is a ConnectionError).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Keys:
    """The Redis key and channel names of one cluster, all under one prefix.

    Tests give each cluster its own prefix, so many share one redis-server without seeing each
    other.
    """

    __slots__ = ("prefix", "nodes", "seen", "sockets", "events")

    def __init__(self, prefix: str = "msfu:") -> None:
        self.prefix = prefix
        self.nodes = prefix + "nodes"  # hash node_id -> entry (JSON)
        self.seen = prefix + "nodes:seen"  # sorted set node_id -> last refresh (Redis clock, ms)
        self.sockets = prefix + "sockets"  # hash queue_id -> [user_id, node_id]
        self.events = prefix + "events"  # channel: every event, cluster-wide

    def claim(self, meeting_id: str) -> str:
        return f"{self.prefix}claim:{meeting_id}"  # string: owner node_id

    def node_claims(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:claims"  # set of meeting ids

    def node_sockets(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:sockets"  # set of queue ids

    def roster(self, meeting_id: str) -> str:
        return f"{self.prefix}roster:{meeting_id}"  # hash user_id -> queue_id

    def rpc(self, node_id: str) -> str:
        return f"{self.prefix}rpc:{node_id}"  # channel: requests to a node

    def reply(self, node_id: str) -> str:
        return f"{self.prefix}reply:{node_id}"  # channel: answers to a node's calls


class RedisLink:
    """A redis-py asyncio client whose every command either answers or fails within `timeout`.

    `max_connections` bounds the pool (a command waits for a free connection, within the same
    timeout); pub/sub subscriptions open connections of their own (`pubsub()`).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "msfu:",
        timeout: float = 2.0,
        max_connections: int = 64,
    ) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.timeout = timeout
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.client = redis.Redis(connection_pool=pool)

    async def run(self, what: str, command: Callable[[], Awaitable[T]]) -> T:
        """`await command()`, or ClusterUnavailable naming `what` within about `timeout` s."""
        try:
            async with asyncio.timeout(self.timeout + 0.5):
                result = await command()
        except UNREACHABLE as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py can turn a cancellation that lands mid-command into a ConnectionError
                # ("Connection closed by server"): the task was cancelled, so it stays cancelled
                # instead of going on as after an outage.
                raise asyncio.CancelledError() from None
            raise ClusterUnavailable(f"redis unavailable ({what}): {exc or type(exc).__name__}") from None
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py 8 (asyncio) sometimes returns normally from a command cancelled while it
            # read the answer: the cancellation would be lost and the task go on.
            raise asyncio.CancelledError()
        return result

    def script(self, lua: str) -> Any:
        """A Lua script run atomically by Redis (EVALSHA; loaded again after a restart)."""
        return self.client.register_script(lua)

    def pubsub(self) -> Any:
        return self.client.pubsub(ignore_subscribe_messages=True)

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except UNREACHABLE:  # closing a connection to a Redis that went away
            pass


async def stop_task(task: asyncio.Task | None) -> None:
    """Cancels a background task and waits for its end, cancelling again if it goes on.

    redis-py 8's asyncio client loses a cancellation that lands while it reads an answer (about
    1 in 30 in a loop of PINGs cancelled at random: the command returns, or fails with "Connection
    closed by server"), which once left a watcher looping on after cancel(). RedisLink.run keeps
    such a cancellation a cancellation; this is the belt to those braces.
    """
    if task is None:
        return
    tries = 0
    while not task.done():
        if tries:
            log.warning("cluster task %s went on after cancel(); cancelling again", task.get_name())
        task.cancel()
        tries += 1
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        log.error("cluster task %s ended with an error: %r", task.get_name(), task.exception())


# The Redis clock in milliseconds, inside a script: every node compares ages on one clock, so
# skew between the nodes' clocks cannot make a live node look dead.
LUA_NOW = "local _t = redis.call('TIME') local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)\n"
