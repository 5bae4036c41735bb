"""Request and answer between nodes over Redis pub/sub, as LiveKit's psrpc does over its Redis bus.

Each node listens on `rpc:<node>` for requests and on `reply:<node>` for the answers to its own
calls. A request is `{"id", "reply", "op", "payload", "ttl"}`; an answer `{"id", "result"}` or
`{"id", "error": {"status", "code", "message"}}`: an error is data, so the caller raises the same
error (same status, code and message) as the owner raised, and a relayed call answers exactly as
a local one. PUBLISH says how many subscribers got the request: none means the node is gone, and
the call fails at once instead of at its timeout.

Bounds: at most `max_in_flight` calls wait for answers (more wait for a slot within their own
timeout); a node queues at most `max_queue` requests for `workers` handlers, and answers 503 to
the ones beyond. A request that waited in the queue longer than its caller waits is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ApiError
from .errors import ClusterUnavailable
from .link import RedisLink, stop_task
from .subscriber import Subscription

log = logging.getLogger("meeting_sfu.cluster")

Handler = Callable[[str, Any], Awaitable[Any]]
ErrorFactory = Callable[[int, str, str], Exception]


def error_data(exc: BaseException) -> dict[str, Any]:
    """An exception as the data of an answer: the domain's error keeps its status, code and
    message; anything else is the 500 the node would have answered locally."""
    status, code, message = getattr(exc, "status", None), getattr(exc, "code", None), getattr(exc, "message", None)
    if isinstance(status, int) and isinstance(code, str) and isinstance(message, str):
        return {"status": status, "code": code, "message": message}
    return {"status": 500, "code": "internal_error", "message": "internal error"}


class Relay:
    """This node's end of the request/answer channels.

    `serve(handler)` starts listening; `handler(operation, payload)` returns JSON-able data or
    raises the domain's error. `call()` raises `error_factory(status, code, message)` for an
    error answer (default ApiError), ClusterUnavailable on a timeout, an unreachable node or Redis.
    """

    def __init__(
        self,
        link: RedisLink,
        node_id: str,
        *,
        max_in_flight: int = 256,
        max_queue: int = 256,
        workers: int = 16,
        error_factory: ErrorFactory = ApiError,
    ) -> None:
        self.link = link
        self.node_id = node_id
        self._keys = link.keys
        self._error_factory = error_factory
        self._handler: Handler | None = None
        self._pending: dict[str, asyncio.Future] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: asyncio.Queue = asyncio.Queue(max_queue)
        self._workers_n = workers
        self._workers: list[asyncio.Task] = []
        self._rpc = self._keys.rpc(node_id)
        self._reply = self._keys.reply(node_id)
        self.subscription = Subscription(link, [self._rpc, self._reply], self._on_message, name=f"relay-{node_id}")
        self.refused = 0  # requests answered 503 because the queue was full

    async def serve(self, handler: Handler, wait: float = 2.0) -> None:
        """Answers requests with `handler`; waits up to `wait` s for the first subscription."""
        self._handler = handler
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name=f"cluster-relay-{self.node_id}-{i}")
                for i in range(self._workers_n)
            ]
        await self.subscription.start(wait)

    async def stop(self) -> None:
        await self.subscription.stop()
        workers, self._workers = self._workers, []
        for task in workers:
            await stop_task(task)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClusterUnavailable("relay stopped"))

    async def call(self, node_id: str, operation: str, payload: Any = None, timeout: float = 5.0) -> Any:
        """Carries out `operation` on `node_id` and returns its result (or raises its error)."""
        if not self.subscription.ready.is_set():
            raise ClusterUnavailable("relay: not subscribed to redis")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise ClusterUnavailable(f"relay: too many calls in flight to reach node {node_id}") from None
        request_id = uuid.uuid4().hex
        future = loop.create_future()
        self._pending[request_id] = future
        try:
            message = json.dumps(
                {
                    "id": request_id, "reply": self._reply, "op": operation, "payload": payload,
                    "ttl": max(0.0, deadline - loop.time()),
                },
                separators=(",", ":"),
            )
            receivers = await self.link.run("relay", lambda: self.link.client.publish(self._keys.rpc(node_id), message))
            if not receivers:
                raise ClusterUnavailable(f"node {node_id} is not reachable")
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    answer = await future
            except TimeoutError:
                raise ClusterUnavailable(f"node {node_id} did not answer {operation} within {timeout:g} s") from None
        finally:
            self._pending.pop(request_id, None)
            self._slots.release()
        error = answer.get("error")
        if error is not None:
            raise self._error_factory(error["status"], error["code"], error["message"])
        return answer.get("result")

    async def _on_message(self, channel: str, data: bytes) -> None:
        try:
            message = json.loads(data)
            request_id = message["id"]
        except (ValueError, KeyError, TypeError):
            log.warning("cluster relay dropped a malformed message channel=%s", channel)
            return
        if channel == self._reply:
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                future.set_result(message)
            return
        try:
            self._queue.put_nowait((asyncio.get_running_loop().time(), message))
        except asyncio.QueueFull:
            self.refused += 1
            await self._answer(message, {"error": {"status": 503, "code": "cluster_unavailable",
                                                   "message": f"node {self.node_id} is overloaded"}})

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            received, message = await self._queue.get()
            try:
                ttl = float(message.get("ttl", 0))
                if loop.time() - received > ttl:
                    continue  # its caller gave up: doing it now would surprise everyone
                try:
                    if self._handler is None:
                        raise ClusterUnavailable(f"node {self.node_id} does not serve requests")
                    answer = {"result": await self._handler(str(message.get("op")), message.get("payload"))}
                    body = json.dumps({"id": message["id"], **answer}, separators=(",", ":"))
                except Exception as exc:  # the domain's error, or a bug: both become an answer
                    if not isinstance(exc, ApiError):
                        log.exception("cluster relayed operation failed op=%s", message.get("op"))
                    answer = {"error": error_data(exc)}
                    body = None
                await self._answer(message, answer, body)
            except Exception:
                log.exception("cluster relay worker error")

    async def _answer(self, request: dict[str, Any], answer: dict[str, Any], body: str | None = None) -> None:
        reply = request.get("reply")
        if not isinstance(reply, str):
            return
        if body is None:
            body = json.dumps({"id": request["id"], **answer}, separators=(",", ":"))
        with contextlib.suppress(ClusterUnavailable):  # the caller times out, and says so
            await self.link.run("relay answer", lambda: self.link.client.publish(reply, body))
