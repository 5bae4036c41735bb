"""Dead-node takeover: a survivor stops each meeting of a node that died, as by a stop.

Every node runs a watcher. Every `interval_seconds` it asks the registry for nodes whose entry is
older than `dead_after_seconds`, and for each of their claims tries to move the claim to itself
(Claims.take_over, a compare-and-set that also checks that the node is still dead): of all
survivors exactly one wins each meeting. The winner reads the meeting's roster and calls
`on_takeover(meeting_id, roster)`, so the domain stops the meeting as by a stop (LEFT for each
participant, then STOPPED); then it clears the roster and releases the claim, and the meeting can
be started again on a live node. If the callback fails (the store is down, say), the claim goes
back to the dead node and the next round, on whichever survivor, tries again. A takeover winner
that dies in turn leaves the claim under its own name: the next survivor takes it from there.

The dead node's sockets are purged (they closed with it); `on_sockets_lost(node_id, sockets)`
lets the domain make their participants in meetings on live nodes leave. Then the dead node's
entry is forgotten. A node that was taken for dead but lives (cut from Redis for longer than
dead_after) finds, at its next round, meetings it runs but no longer owns: `on_claim_lost` (given
`local_meetings`) lets the domain drop them, so that no meeting runs on two nodes.

Worst case from the death: dead_after + interval + the callbacks (10 s + 2 s with the defaults,
within the 20 s of DESIGN section 9.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from .claims import Claims
from .errors import ClusterUnavailable
from .link import stop_task
from .registry import NodeRegistry
from .roster import Roster
from .sockets import SocketDirectory, SocketEntry

log = logging.getLogger("meeting_sfu.cluster")

OnTakeover = Callable[[str, dict[str, str]], Awaitable[None]]
OnSocketsLost = Callable[[str, list[SocketEntry]], Awaitable[None]]
OnClaimLost = Callable[[str], Awaitable[None]]


class TakeoverWatcher:
    """Watches for dead nodes and takes over their meetings on behalf of this node."""

    def __init__(
        self,
        registry: NodeRegistry,
        claims: Claims,
        roster: Roster,
        sockets: SocketDirectory,
        on_takeover: OnTakeover,
        on_sockets_lost: OnSocketsLost | None = None,
        *,
        local_meetings: Callable[[], Iterable[str]] | None = None,
        on_claim_lost: OnClaimLost | None = None,
        interval_seconds: float = 2.0,
    ) -> None:
        self.registry = registry
        self.claims = claims
        self.roster = roster
        self.sockets = sockets
        self.node_id = registry.node_id
        self.interval_seconds = interval_seconds
        self._on_takeover = on_takeover
        self._on_sockets_lost = on_sockets_lost
        self._local_meetings = local_meetings
        self._on_claim_lost = on_claim_lost
        self._task: asyncio.Task | None = None
        self.taken: list[str] = []  # meetings this node took over, for tests and logs

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"cluster-takeover-{self.node_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            try:
                await self.check()
            except ClusterUnavailable as exc:
                log.debug("cluster takeover check skipped: %s", exc.message)
            except Exception:
                log.exception("cluster takeover check failed")

    async def check(self) -> list[str]:
        """One round: takes over what it can of every dead node; returns the meetings it took."""
        taken = []
        await self._check_own_claims()
        for dead in await self.registry.dead():
            if dead == self.node_id:
                continue  # this node's own entry is late (Redis was away): it refreshes soon
            for meeting_id in sorted(await self.claims.of_node(dead)):
                if await self._take(meeting_id, dead):
                    taken.append(meeting_id)
            lost = await self.sockets.purge_node(dead)
            if lost and self._on_sockets_lost is not None:
                try:
                    await self._on_sockets_lost(dead, lost)
                except Exception:
                    log.exception("cluster lost sockets handling failed node=%s", dead)
            if await self.registry.forget(dead):
                log.info("cluster node forgotten node=%s", dead)
        return taken

    async def _check_own_claims(self) -> None:
        """A meeting this node runs but no longer owns (it was taken for dead, e.g. while Redis was
        out of its reach for longer than dead_after) goes: `on_claim_lost` stops it here, quietly,
        as its survivor has stopped it for everyone already."""
        if self._local_meetings is None or self._on_claim_lost is None:
            return
        local = set(self._local_meetings())
        if not local:
            return
        for meeting_id in sorted(local - await self.claims.of_node(self.node_id)):
            log.warning("cluster claim lost meeting=%s node=%s", meeting_id, self.node_id)
            try:
                await self._on_claim_lost(meeting_id)
            except Exception:
                log.exception("cluster claim lost handling failed meeting=%s", meeting_id)

    async def _take(self, meeting_id: str, dead: str) -> bool:
        if not await self.claims.take_over(meeting_id, dead, self.node_id):
            return False
        log.warning("cluster takeover meeting=%s dead_node=%s by=%s", meeting_id, dead, self.node_id)
        try:
            roster = await self.roster.get(meeting_id)
            await self._on_takeover(meeting_id, roster)
        except Exception:
            log.exception("cluster takeover of meeting=%s failed; it is retried", meeting_id)
            with contextlib.suppress(ClusterUnavailable):
                await self.claims.hand_back(meeting_id, self.node_id, dead)
            return False
        # Unless the meeting was started again here meanwhile (the callback may release the claim
        # before it tells anyone the meeting stopped): then the claim and roster are the new run's.
        if self._local_meetings is None or meeting_id not in set(self._local_meetings()):
            await self.roster.clear(meeting_id)
            await self.claims.release(meeting_id, self.node_id)
        self.taken.append(meeting_id)
        return True
