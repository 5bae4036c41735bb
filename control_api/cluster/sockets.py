"""The open /events sockets of the whole cluster: queueId -> (user id, node).

A node adds each socket when it opens and removes it when it closes, so a `queue-id` from a
socket on node A can be checked on a `join` that reaches node B (DESIGN section 4: it must be an
open socket of the same user). A socket whose node is dead is not open: `lookup` checks the
node's entry in the same script, and the takeover watcher purges a dead node's sockets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .link import LUA_NOW, RedisLink


@dataclass(frozen=True, slots=True)
class SocketEntry:
    queue_id: str
    user_id: str
    node_id: str


_ADD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
"""

_REMOVE = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2] .. cjson.decode(entry)[2] .. ':sockets', ARGV[1])
return 1
"""

# The entry, only if its node was refreshed within ARGV[2] ms.
_LOOKUP = LUA_NOW + """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return false end
local seen = redis.call('ZSCORE', KEYS[2], cjson.decode(entry)[2])
if not seen or tonumber(seen) < now - tonumber(ARGV[2]) then return false end
return entry
"""

_PURGE = """
local queues = redis.call('SMEMBERS', KEYS[2])
local out = {}
for _, q in ipairs(queues) do
  local entry = redis.call('HGET', KEYS[1], q)
  if entry then
    out[#out + 1] = q
    out[#out + 1] = entry
    redis.call('HDEL', KEYS[1], q)
  end
end
redis.call('DEL', KEYS[2])
return out
"""


class SocketDirectory:
    """Cluster-wide queueId -> (user, node). Every method raises ClusterUnavailable when Redis
    cannot be reached."""

    def __init__(self, link: RedisLink, *, dead_after_seconds: float = 10.0) -> None:
        self.link = link
        self.dead_after_ms = int(dead_after_seconds * 1000)
        self._keys = link.keys
        self._add = link.script(_ADD)
        self._remove = link.script(_REMOVE)
        self._lookup = link.script(_LOOKUP)
        self._purge = link.script(_PURGE)

    async def add(self, queue_id: str, user_id: str, node_id: str) -> None:
        keys = self._keys
        await self.link.run(
            "socket open",
            lambda: self._add(
                keys=[keys.sockets, keys.node_sockets(node_id)], args=[queue_id, json.dumps([user_id, node_id])]
            ),
        )

    async def remove(self, queue_id: str) -> bool:
        """Forgets a closed socket; False if it was not known."""
        keys = self._keys
        done = await self.link.run(
            "socket close",
            lambda: self._remove(keys=[keys.sockets, keys.prefix + "node:"], args=[queue_id]),
        )
        return bool(done)

    async def lookup(self, queue_id: str) -> SocketEntry | None:
        """The open socket `queue_id` (None when unknown or its node is dead)."""
        keys = self._keys
        raw = await self.link.run(
            "socket lookup",
            lambda: self._lookup(keys=[keys.sockets, keys.seen], args=[queue_id, self.dead_after_ms]),
        )
        if raw is None:
            return None
        user_id, node_id = json.loads(raw)
        return SocketEntry(queue_id, user_id, node_id)

    async def of_node(self, node_id: str) -> list[SocketEntry]:
        keys = self._keys
        queues = await self.link.run("node sockets", lambda: self.link.client.smembers(keys.node_sockets(node_id)))
        if not queues:
            return []
        ids = sorted(q.decode() for q in queues)
        raw = await self.link.run("node sockets", lambda: self.link.client.hmget(keys.sockets, ids))
        return [SocketEntry(q, *json.loads(r)) for q, r in zip(ids, raw, strict=True) if r is not None]

    async def purge_node(self, node_id: str) -> list[SocketEntry]:
        """Removes every socket of a (dead) node; returns them."""
        keys = self._keys
        raw = await self.link.run(
            "purge node sockets", lambda: self._purge(keys=[keys.sockets, keys.node_sockets(node_id)])
        )
        return [SocketEntry(raw[i].decode(), *json.loads(raw[i + 1])) for i in range(0, len(raw), 2)]
