"""Which node owns each active meeting: meeting -> node claims, taken atomically.

A claim is a string key `claim:<meeting>` holding the owner's node id, taken with SET NX inside
a script that also adds the meeting to the owner's set `node:<id>:claims` (so a node's claims can
be listed when it dies). Of any number of nodes claiming one meeting at the same instant, exactly
one gets it; the others learn who did. Release and takeover compare before they write (as
LiveKit's room lock is released by a compare-and-delete), so a node never drops or steals a
claim it does not hold.
"""

from __future__ import annotations

from .link import LUA_NOW, RedisLink

_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SADD', KEYS[2], ARGV[2])
  return ARGV[1]
end
return redis.call('GET', KEYS[1])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# Moves a claim from a dead node to a live one, only if the dead node still holds it and is
# still dead (an entry older than ARGV[4] ms, or none): of two survivors, one wins.
_TAKE_OVER = LUA_NOW + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  redis.call('SREM', KEYS[2], ARGV[3])
  return 0
end
local seen = redis.call('ZSCORE', KEYS[4], ARGV[1])
if seen and tonumber(seen) >= now - tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""


_MOVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Claims:
    """Meeting -> node claims. Every method raises ClusterUnavailable when Redis cannot be reached."""

    def __init__(self, link: RedisLink, *, dead_after_seconds: float = 10.0) -> None:
        self.link = link
        self.dead_after_ms = int(dead_after_seconds * 1000)
        self._keys = link.keys
        self._claim = link.script(_CLAIM)
        self._release = link.script(_RELEASE)
        self._take_over = link.script(_TAKE_OVER)
        self._move = link.script(_MOVE)

    async def claim(self, meeting_id: str, node_id: str) -> str:
        """Claims the meeting for `node_id` unless it is claimed already; returns the owner
        (`node_id` when this call took it)."""
        keys = self._keys
        owner = await self.link.run(
            "claim meeting",
            lambda: self._claim(keys=[keys.claim(meeting_id), keys.node_claims(node_id)], args=[node_id, meeting_id]),
        )
        return _text(owner)

    async def owner(self, meeting_id: str) -> str | None:
        return _text(await self.link.run("meeting owner", lambda: self.link.client.get(self._keys.claim(meeting_id))))

    async def release(self, meeting_id: str, node_id: str) -> bool:
        """Drops the claim if `node_id` holds it (the meeting stopped); False otherwise."""
        keys = self._keys
        done = await self.link.run(
            "release meeting",
            lambda: self._release(
                keys=[keys.claim(meeting_id), keys.node_claims(node_id)], args=[node_id, meeting_id]
            ),
        )
        return bool(done)

    async def of_node(self, node_id: str) -> set[str]:
        """The meetings `node_id` owns."""
        raw = await self.link.run("node claims", lambda: self.link.client.smembers(self._keys.node_claims(node_id)))
        return {_text(m) for m in raw}

    async def take_over(self, meeting_id: str, dead_node: str, new_node: str) -> bool:
        """Moves the claim from `dead_node` to `new_node` if `dead_node` still holds it and is
        still dead; True for the one caller that did."""
        keys = self._keys
        done = await self.link.run(
            "take over meeting",
            lambda: self._take_over(
                keys=[keys.claim(meeting_id), keys.node_claims(dead_node), keys.node_claims(new_node), keys.seen],
                args=[dead_node, new_node, meeting_id, self.dead_after_ms],
            ),
        )
        return bool(done)

    async def hand_back(self, meeting_id: str, holder: str, dead_node: str) -> bool:
        """Gives a taken-over claim back to the dead node (its stop failed; the next round retries)."""
        keys = self._keys
        done = await self.link.run(
            "hand back meeting",
            lambda: self._move(
                keys=[keys.claim(meeting_id), keys.node_claims(holder), keys.node_claims(dead_node)],
                args=[holder, dead_node, meeting_id],
            ),
        )
        return bool(done)
