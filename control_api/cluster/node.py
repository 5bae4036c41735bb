"""One node's part of the cluster: its Redis link and the cluster's parts over it, started and
stopped together (DESIGN section 9.2).

Built when the app is built (nothing here touches Redis before `start`); the domain
(`meetings.clustered.ClusteredMeetingService`) gives the callbacks: the relay's dispatch, the
takeover's stop, what a dead node's lost sockets mean, a claim lost by a node taken for dead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..config import Config
from .bus import EventBus
from .claims import Claims
from .hub import ClusterHub
from .link import RedisLink
from .registry import NodeLoad, NodeRegistry
from .relay import Relay
from .roster import Roster
from .sockets import SocketDirectory, SocketEntry
from .startup import node_id as configured_node_id
from .takeover import TakeoverWatcher

log = logging.getLogger("meeting_sfu.cluster")


class ClusterNode:
    def __init__(self, config: Config, hub: ClusterHub) -> None:
        settings = config.cluster
        host, port = config.server.host, config.server.port
        self.node_id = configured_node_id(config)
        self.address = settings.advertise_url or f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self.link = RedisLink(settings.redis_url, prefix=settings.key_prefix)
        self.load: Callable[[], NodeLoad] = NodeLoad
        self.registry = NodeRegistry(self.link, self.node_id, self.address, lambda: self.load())
        self.claims = Claims(self.link)
        self.sockets = SocketDirectory(self.link)
        self.roster = Roster(self.link)
        self.relay = Relay(self.link, self.node_id)
        self.hub = hub
        self.bus = EventBus(self.link, self.node_id, hub.deliver)
        self.watcher: TakeoverWatcher | None = None
        self.started = False

    async def start(
        self,
        *,
        dispatch: Callable[[str, Any], Awaitable[Any]],
        on_takeover: Callable[[str, dict[str, str]], Awaitable[None]],
        on_sockets_lost: Callable[[str, list[SocketEntry]], Awaitable[None]],
        local_meetings: Callable[[], Iterable[str]],
        on_claim_lost: Callable[[str], Awaitable[None]],
    ) -> None:
        """Never fails on an unreachable Redis: every part comes up when Redis does, and calls
        answer 503 until then."""
        await self.bus.start()
        self.hub.bus = self.bus
        await self.relay.serve(dispatch)
        await self.registry.start()
        self.watcher = TakeoverWatcher(
            self.registry,
            self.claims,
            self.roster,
            self.sockets,
            on_takeover,
            on_sockets_lost,
            local_meetings=local_meetings,
            on_claim_lost=on_claim_lost,
        )
        await self.watcher.start()
        self.started = True
        log.info("cluster node started node=%s address=%s", self.node_id, self.address)

    async def stop(self) -> None:
        """After the node's own meetings stopped (their claims released): the entry goes, so the
        others see at once that the node left."""
        if self.watcher is not None:
            await self.watcher.stop()
        await self.registry.stop()
        try:
            await self.bus.drain(2.0)
        except TimeoutError:
            log.warning("cluster events not all sent at shutdown node=%s", self.node_id)
        self.hub.bus = None
        await self.bus.stop()
        await self.relay.stop()
        await self.link.close()
        self.started = False
        log.info("cluster node stopped node=%s", self.node_id)
