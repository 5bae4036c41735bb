"""The live nodes of a cluster, each with its HTTP address and load (DESIGN section 9.2).

Layout (as LiveKit keeps a `nodes` hash of node id -> node, plus a freshness check): a hash of
node id -> entry (JSON) and a sorted set of node id -> the time of its last refresh on the Redis
clock. A node refreshes both every `refresh_seconds` (2 s); an entry not refreshed for
`dead_after_seconds` (10 s) is dead. A dead node's entry stays until the takeover watcher has
taken over its claims, then is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from .errors import ClusterUnavailable
from .link import LUA_NOW, NODE_ID, RedisLink, stop_task

log = logging.getLogger("meeting_sfu.cluster")


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """What a node carries; the least loaded node is the one with the fewest peer connections,
    then participants, then meetings."""

    meetings: int = 0
    participants: int = 0
    peer_connections: int = 0

    def rank(self) -> tuple[int, int, int]:
        return (self.peer_connections, self.participants, self.meetings)


@dataclass(frozen=True, slots=True)
class NodeEntry:
    node_id: str
    address: str  # its HTTP base URL, e.g. "http://10.0.0.5:10000"
    load: NodeLoad
    seen_ms: int  # last refresh, Redis clock (ms since the epoch)


_REFRESH = LUA_NOW + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return now
"""

# Entries refreshed within ARGV[1] ms: {id, score, json, id, score, json, ...}.
_LIVE = LUA_NOW + """
local found = redis.call('ZRANGEBYSCORE', KEYS[2], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #found, 2 do
  local entry = redis.call('HGET', KEYS[1], found[i])
  if entry then
    out[#out + 1] = found[i]
    out[#out + 1] = found[i + 1]
    out[#out + 1] = entry
  end
end
return out
"""

# The claims each node holds now: {SCARD KEYS[1], SCARD KEYS[2], ...}.
_CLAIM_COUNTS = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('SCARD', KEYS[i]) end
return out
"""

_DEAD = LUA_NOW + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])))
"""

# A node that stops cleanly: gone at once when it holds no claims; otherwise marked dead now, so
# that the watchers take its claims over without waiting 10 s.
_LEAVE = """
if redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 0
"""

# Forget a dead node once it holds no claims (and has not come back meanwhile).
_FORGET = LUA_NOW + """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score and tonumber(score) >= now - tonumber(ARGV[2]) then return 0 end
if redis.call('SCARD', KEYS[3]) > 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[4])
return 1
"""


class NodeRegistry:
    """This node's entry in the cluster, refreshed in the background, and the view of the others.

    `load` is called at each refresh (it must be cheap and not block). `start()` never fails on
    an unreachable Redis: the refresh loop logs the outage once and resumes when Redis is back.
    Every query raises ClusterUnavailable when Redis cannot be reached.
    """

    def __init__(
        self,
        link: RedisLink,
        node_id: str,
        address: str,
        load: Callable[[], NodeLoad] = NodeLoad,
        *,
        refresh_seconds: float = 2.0,
        dead_after_seconds: float = 10.0,
    ) -> None:
        if not NODE_ID.fullmatch(node_id):
            raise ValueError(f"node id {node_id!r}: 1-64 letters, digits, '.', '_' or '-'")
        self.link = link
        self.node_id = node_id
        self.address = address
        self.refresh_seconds = refresh_seconds
        self.dead_after_seconds = dead_after_seconds
        self._load = load
        self._keys = link.keys
        self._refresh = link.script(_REFRESH)
        self._live = link.script(_LIVE)
        self._dead = link.script(_DEAD)
        self._claim_counts = link.script(_CLAIM_COUNTS)
        self._leave = link.script(_LEAVE)
        self._forget = link.script(_FORGET)
        self._task: asyncio.Task | None = None
        self.refreshed = 0  # successful refreshes, for tests and metrics

    @property
    def dead_after_ms(self) -> int:
        return int(self.dead_after_seconds * 1000)

    async def refresh(self) -> None:
        """Writes this node's entry and load now."""
        entry = {"node_id": self.node_id, "address": self.address, "load": asdict(self._load())}
        keys = self._keys
        await self.link.run(
            "node refresh",
            lambda: self._refresh(keys=[keys.nodes, keys.seen], args=[self.node_id, json.dumps(entry)]),
        )
        self.refreshed += 1

    async def start(self) -> None:
        """Refreshes once (when Redis answers), then every `refresh_seconds` in the background."""
        if self._task is None:
            with contextlib.suppress(ClusterUnavailable):
                await self.refresh()
            self._task = asyncio.create_task(self._loop(), name=f"cluster-registry-{self.node_id}")

    async def _loop(self) -> None:
        down = False
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except ClusterUnavailable as exc:
                if not down:
                    log.warning("cluster node refresh failed node=%s error=%s", self.node_id, exc.message)
                down = True
            except Exception:  # a bug must not end the heartbeat: the node would look dead
                log.exception("cluster node refresh failed node=%s", self.node_id)
            else:
                if down:
                    log.info("cluster node refresh resumed node=%s", self.node_id)
                down = False

    async def stop(self, *, leave: bool = True) -> None:
        """Stops refreshing; `leave`: also withdraws the entry (best effort: Redis may be down)."""
        task, self._task = self._task, None
        await stop_task(task)
        if leave:
            keys = self._keys
            with contextlib.suppress(ClusterUnavailable):
                await self.link.run(
                    "node leave",
                    lambda: self._leave(
                        keys=[keys.nodes, keys.seen, keys.node_claims(self.node_id)], args=[self.node_id]
                    ),
                )

    async def live(self) -> list[NodeEntry]:
        """Every node refreshed within `dead_after_seconds`, by node id."""
        keys = self._keys
        raw = await self.link.run(
            "list nodes", lambda: self._live(keys=[keys.nodes, keys.seen], args=[self.dead_after_ms])
        )
        out = []
        for i in range(0, len(raw), 3):
            data = json.loads(raw[i + 2])
            out.append(NodeEntry(data["node_id"], data["address"], NodeLoad(**data["load"]), int(float(raw[i + 1]))))
        return sorted(out, key=lambda e: e.node_id)

    async def get(self, node_id: str) -> NodeEntry | None:
        """The node's entry when it is live, else None."""
        return next((e for e in await self.live() if e.node_id == node_id), None)

    async def least_loaded(self) -> NodeEntry:
        """The live node with the least load (ties: the smallest node id).

        A node's meetings count as the larger of its last reported number and the claims it
        holds now: a claim is counted the moment it is taken, a reported load only at the
        node's next refresh, so a burst of starts between two refreshes spreads over the nodes
        instead of all landing on the one that looked least loaded."""
        nodes = await self.live()
        if not nodes:
            raise ClusterUnavailable("no live node in the cluster")
        keys = self._keys
        claims = await self.link.run(
            "claims per node", lambda: self._claim_counts(keys=[keys.node_claims(e.node_id) for e in nodes])
        )

        def rank(pair: tuple[NodeEntry, int]) -> tuple[int, int, int, str]:
            entry, held = pair
            load = replace(entry.load, meetings=max(entry.load.meetings, int(held)))
            return (*load.rank(), entry.node_id)

        return min(zip(nodes, claims, strict=True), key=rank)[0]

    async def dead(self) -> list[str]:
        """Nodes whose entry is older than `dead_after_seconds` (their claims are to be taken over)."""
        keys = self._keys
        raw = await self.link.run("dead nodes", lambda: self._dead(keys=[keys.seen], args=[self.dead_after_ms]))
        return sorted(r.decode() if isinstance(r, bytes) else r for r in raw)

    async def forget(self, node_id: str) -> bool:
        """Removes a dead node holding no claims (and its socket list); False if it is live or
        still holds claims."""
        keys = self._keys
        done = await self.link.run(
            "forget node",
            lambda: self._forget(
                keys=[keys.nodes, keys.seen, keys.node_claims(node_id), keys.node_sockets(node_id)],
                args=[node_id, self.dead_after_ms],
            ),
        )
        return bool(done)
