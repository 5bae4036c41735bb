"""Each active meeting's participants, kept in Redis by the meeting's owner.

When the owner dies its memory goes with it; the roster is what a survivor needs to stop the
meeting as by a stop (MEETING_PARTICIPANT_LEFT for each participant, then MEETING_STOPPED). A
hash `roster:<meeting>` of user id -> queue id (one participant per user: a second join from
another socket replaces the first, as a clash does).
"""

from __future__ import annotations

from .link import RedisLink


class Roster:
    """Participants per meeting. Every method raises ClusterUnavailable when Redis cannot be reached."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._keys = link.keys

    async def add(self, meeting_id: str, user_id: str, queue_id: str) -> None:
        key = self._keys.roster(meeting_id)
        await self.link.run("roster add", lambda: self.link.client.hset(key, user_id, queue_id))

    async def remove(self, meeting_id: str, user_id: str) -> None:
        await self.link.run("roster remove", lambda: self.link.client.hdel(self._keys.roster(meeting_id), user_id))

    async def get(self, meeting_id: str) -> dict[str, str]:
        """user id -> queue id."""
        raw = await self.link.run("roster", lambda: self.link.client.hgetall(self._keys.roster(meeting_id)))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def clear(self, meeting_id: str) -> None:
        await self.link.run("roster clear", lambda: self.link.client.delete(self._keys.roster(meeting_id)))
