"""The meeting rules on a node of a cluster (DESIGN section 9.2): any node answers any call, the
node that owns an active meeting carries out every call about it.

`ClusteredMeetingService` is the facade with a router in front of each operation about one
meeting: it asks Redis who owns the meeting (`Claims`) and, when another node does, relays the
call there (`Relay`: the owner answers with its result or its ApiError, so the answer has the
same status and body as a local one). The owner runs the plain `MeetingService` method. A
meeting with no claim is inactive: any node answers from the store.

- start: checked here (404, 403), then claimed on the least loaded live node; whoever the claim
  names starts it. A start that fails gives the claim back. Every stop (a call, the last one
  out, a media worker lost, a delete) releases it.
- join: the `queue-id` may be a socket of another node; the node that carries the join out asks
  the socket directory (before the domain's checks, which then find it in `hub.session`).
- a socket that closes: forgotten in the directory, then every live node leaves its meetings
  joined from it (`socket_closed` relayed to each: the meeting's node is among them).
- the participants of each meeting are written to its roster (for a survivor's takeover) by one
  background task, in order, so that a slow Redis never holds a meeting's lock.
- takeover (`stop_orphan`): a survivor stops a dead node's meeting as by a stop, from the store
  and the roster: LEFT for each participant, then STOPPED (to room members and waiting users).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..auth import Principal
from ..cluster.errors import ClusterUnavailable
from ..cluster.hub import ClusterHub
from ..cluster.node import ClusterNode
from ..cluster.registry import NodeLoad
from ..cluster.sockets import SocketEntry
from ..errors import ApiError, bad_request
from ..events import make_event
from ..storage import AsyncStore, StoreUnavailable
from ..storage.rows import MeetingRow
from .service import MEETING_OPERATIONS, MeetingService
from .state import LiveMeeting

log = logging.getLogger("meeting_sfu.cluster")

RELAY_TIMEOUT = 5.0  # seconds a relayed call may take before it answers 503
MAX_ROSTER_WRITES = 4096


def principal_data(principal: Principal) -> dict[str, Any]:
    return {
        "user_id": principal.user_id,
        "name": principal.name,
        "guest": principal.guest,
        "grants": dict(principal.grants),
    }


def principal_from(data: Any) -> Principal:
    if not isinstance(data, dict) or not isinstance(data.get("user_id"), str):
        raise bad_request("relayed call without a principal")
    grants = data.get("grants") or {}
    return Principal(str(data["user_id"]), data.get("name"), bool(data.get("guest")), dict(grants))


class ClusteredMeetingService(MeetingService):
    hub: ClusterHub
    # A claim of this node for a meeting it does not run (its start's relay was lost, or a stop
    # could not reach Redis) is released when two sweeps this far apart find it so.
    sweep_seconds = 5.0

    def __init__(self, hub: ClusterHub, media: Any, node: ClusterNode, **options: Any) -> None:
        super().__init__(hub, media, **options)
        self.node = node
        node.load = self.load
        self._roster_writes: asyncio.Queue = asyncio.Queue(MAX_ROSTER_WRITES)
        self._roster_task: asyncio.Task | None = None
        self._sweep_task: asyncio.Task | None = None
        self._starting: set[str] = set()

    # --- start and stop of the node ---------------------------------------------------------

    async def open(self, store: AsyncStore) -> None:
        """As on a single node, except that the waiting queues stay: the meetings of the other
        nodes are live (a meeting's own start clears what a stop could not)."""
        self.store = store
        await self._recover_recordings()

    def _recovers(self, recording_id: str) -> bool:
        """Only the recordings whose parts are in this node's own work directory: the others in
        the store run on other nodes now (or are their nodes' to recover when they come back)."""
        return (self.work_dir / recording_id).exists()

    async def start_cluster(self) -> None:
        self._roster_task = asyncio.create_task(self._write_rosters(), name="cluster-roster-writes")
        self._sweep_task = asyncio.create_task(self._sweep_claims(), name="cluster-claim-sweep")
        await self.node.start(
            dispatch=self.dispatch,
            on_takeover=self.stop_orphan,
            on_sockets_lost=self.sockets_lost,
            local_meetings=lambda: list(self._live),
            on_claim_lost=self.drop_meeting,
        )

    async def stop_cluster(self) -> None:
        """The node's own meetings stop (LEFT, STOPPED to every node; claims released), then the
        node leaves the cluster."""
        for meeting_id in list(self._live):
            try:
                async with self._lock(meeting_id):
                    live = self._live.get(meeting_id)
                    if live is not None:
                        await self._stop(live.row, live, delete_after=False)
            except Exception:
                log.exception("meeting not stopped at shutdown meeting=%s", meeting_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3.0):
                await self._roster_writes.join()
        for task in (self._roster_task, self._sweep_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.node.stop()

    def load(self) -> NodeLoad:
        participants = [p for live in self._live.values() for p in live.participants.values()]
        return NodeLoad(
            meetings=len(self._live),
            participants=len(participants),
            # What each participant holds: audio (and subscriptions) plus one per published stream.
            peer_connections=sum(1 + p.video + p.screen for p in participants),
        )

    # --- routing ----------------------------------------------------------------------------

    async def _relay(self, node_id: str, op: str, principal: Principal, meeting_id: str, *args: Any) -> Any:
        payload = {"op": op, "principal": principal_data(principal), "meeting_id": meeting_id, "args": list(args)}
        return await self.node.relay.call(node_id, "meeting", payload, timeout=RELAY_TIMEOUT)

    async def _route(self, op: str, principal: Principal, meeting_id: str, *args: Any) -> Any:
        owner = await self.node.claims.owner(meeting_id)
        if owner is None or owner == self.node.node_id:
            return await self._here(op, principal, meeting_id, *args)
        return await self._relay(owner, op, principal, meeting_id, *args)

    async def _here(self, op: str, principal: Principal, meeting_id: str, *args: Any) -> Any:
        """Carries the operation out on this node (the meeting's owner, or nobody's)."""
        if op == "start_meeting":
            return await self._start_here(principal, meeting_id)
        if op == "join" and args:
            await self._know_queue(str(args[0]))
        return await getattr(MeetingService, op)(self, principal, meeting_id, *args)

    async def dispatch(self, operation: str, payload: Any) -> Any:
        """A request relayed from another node."""
        try:
            if operation == "meeting":
                op = payload.get("op")
                if op not in MEETING_OPERATIONS:
                    raise bad_request(f"no meeting operation named {op!r}")
                args = payload.get("args") or []
                return await self._here(op, principal_from(payload.get("principal")), str(payload["meeting_id"]), *args)
            if operation == "socket_closed":
                for queue_id in payload.get("queue_ids", []):
                    await self._local_socket_closed(str(queue_id))
                return None
        except StoreUnavailable:
            raise ApiError(503, "store_unavailable", "the database is unavailable, try again later") from None
        raise bad_request(f"no relayed operation named {operation!r}")

    # The operations about one meeting, each routed to the meeting's owner.

    async def get_meeting(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        return await self._route("get_meeting", principal, meeting_id)

    async def delete_meeting(self, principal: Principal, meeting_id: str) -> None:
        return await self._route("delete_meeting", principal, meeting_id)

    async def stop_meeting(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        return await self._route("stop_meeting", principal, meeting_id)

    async def join(self, principal: Principal, meeting_id: str, queue_id: str) -> str:
        return await self._route("join", principal, meeting_id, queue_id)

    async def leave(self, principal: Principal, meeting_id: str) -> None:
        return await self._route("leave", principal, meeting_id)

    async def get_queue(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        return await self._route("get_queue", principal, meeting_id)

    async def update_queued_user(self, principal: Principal, meeting_id: str, user_id: str, status: str) -> None:
        return await self._route("update_queued_user", principal, meeting_id, user_id, status)

    async def update_media(
        self, principal: Principal, meeting_id: str, kind: str, enabled: bool, sdp: str | None
    ) -> None:
        return await self._route("update_media", principal, meeting_id, kind, enabled, sdp)

    async def answer_media(self, principal: Principal, meeting_id: str, sdp: str) -> None:
        return await self._route("answer_media", principal, meeting_id, sdp)

    async def update_subscriptions(
        self,
        principal: Principal,
        meeting_id: str,
        subscribe: list[tuple[str, str, str | None]],
        unsubscribe: list[tuple[str, str]],
    ) -> None:
        return await self._route(
            "update_subscriptions", principal, meeting_id, [list(s) for s in subscribe], [list(u) for u in unsubscribe]
        )

    async def update_audio(
        self, principal: Principal, meeting_id: str, enabled: bool, user_to_moderate: str | None
    ) -> None:
        return await self._route("update_audio", principal, meeting_id, enabled, user_to_moderate)

    async def audio_offer(self, principal: Principal, meeting_id: str, sdp: str) -> None:
        return await self._route("audio_offer", principal, meeting_id, sdp)

    async def start_recording(self, principal: Principal, meeting_id: str) -> None:
        return await self._route("start_recording", principal, meeting_id)

    async def stop_recording(self, principal: Principal, meeting_id: str, name: str, folder_id: str) -> None:
        return await self._route("stop_recording", principal, meeting_id, name, folder_id)

    async def list_meetings(self, principal: Principal) -> list[dict[str, Any]]:
        """Each meeting as its owner sees it (active, participants) when another node owns it."""
        local = await super().list_meetings(principal)

        async def fresh(body: dict[str, Any]) -> dict[str, Any]:
            owner = await self.node.claims.owner(body["id"])
            if owner is None or owner == self.node.node_id:
                return body
            return await self._relay(owner, "get_meeting", principal, body["id"])

        return list(await asyncio.gather(*(fresh(body) for body in local)))

    # --- start ------------------------------------------------------------------------------

    async def start_meeting(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        row = await self._meeting(meeting_id)  # 404 and 403 before anything is claimed
        await self._member(principal, row.room_id)
        owner = await self.node.claims.owner(meeting_id)
        if owner is None:
            target = (await self.node.registry.least_loaded()).node_id
            owner = await self.node.claims.claim(meeting_id, target)  # a concurrent start may win
        if owner == self.node.node_id:
            return await self._start_here(principal, meeting_id)
        return await self._relay(owner, "start_meeting", principal, meeting_id)

    async def _start_here(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        claims, me = self.node.claims, self.node.node_id
        self._starting.add(meeting_id)
        try:
            body = await MeetingService.start_meeting(self, principal, meeting_id)
        except BaseException:
            if meeting_id not in self._live:  # nothing started: the claim goes back
                with contextlib.suppress(ClusterUnavailable):
                    await claims.release(meeting_id, me)
            raise
        finally:
            self._starting.discard(meeting_id)
        # A stop that held the meeting's lock while this start waited for it released the
        # claim: the start takes it again (SET NX: a no-op while this node holds it).
        owner = await claims.claim(meeting_id, me)
        if owner != me:  # another node started it meanwhile: it runs there, not here too
            await self.drop_meeting(meeting_id)
            return await self._relay(owner, "start_meeting", principal, meeting_id)
        return body

    async def _stop(self, row: MeetingRow, live: LiveMeeting, delete_after: bool = True) -> None:
        await super()._stop(row, live, delete_after)
        self._roster_write("clear", row.id)
        try:
            await self.node.claims.release(row.id, self.node.node_id)
        except ClusterUnavailable as exc:  # a claim left behind names a live node: it is swept
            log.error("claim not released at stop meeting=%s error=%s", row.id, exc.message)

    async def _sweep_claims(self) -> None:
        claims, me = self.node.claims, self.node.node_id
        suspects: set[str] = set()
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                stale = await claims.of_node(me) - set(self._live) - self._starting
                for meeting_id in sorted(stale & suspects):
                    async with self._lock(meeting_id):
                        if meeting_id not in self._live and meeting_id not in self._starting:
                            if await claims.release(meeting_id, me):
                                self._roster_write("clear", meeting_id)
                                log.warning("stale claim released meeting=%s", meeting_id)
                suspects = stale - suspects
            except ClusterUnavailable:
                continue
            except Exception:
                log.exception("claim sweep failed")

    async def expire(self) -> int:
        """As on a single node, skipping the meetings active on any node."""
        count = 0
        for row in await self.store.expired_meetings(self._clock()):
            if row.id in self._live or await self.node.claims.owner(row.id) is not None:
                continue
            async with self._lock(row.id):
                if row.id in self._live or await self.store.get_meeting(row.id) is None:
                    continue
                await self._delete(row)
                count += 1
        return count

    # --- participants and their roster ------------------------------------------------------

    async def _add_participant(
        self, row: MeetingRow, live: LiveMeeting, uid: str, queue_id: str, role: str | None, name: str | None
    ) -> None:
        await super()._add_participant(row, live, uid, queue_id, role, name)
        self._roster_write("add", row.id, uid, queue_id)

    async def _remove_participant(
        self, row: MeetingRow, live: LiveMeeting, uid: str, auto_stop: bool = True, stored: dict[str, str] | None = None
    ) -> None:
        present = uid in live.participants
        await super()._remove_participant(row, live, uid, auto_stop, stored)
        if present and row.id in self._live:
            self._roster_write("remove", row.id, uid)

    def _roster_write(self, *write: str) -> None:
        try:
            self._roster_writes.put_nowait(write)
        except asyncio.QueueFull:
            log.error("roster write dropped (redis too slow) write=%s", write[:2])

    async def _write_rosters(self) -> None:
        roster = self.node.roster
        while True:
            kind, meeting_id, *rest = await self._roster_writes.get()
            try:
                if kind == "add":
                    await roster.add(meeting_id, rest[0], rest[1])
                elif kind == "remove":
                    await roster.remove(meeting_id, rest[0])
                else:
                    await roster.clear(meeting_id)
            except ClusterUnavailable as exc:
                log.warning("roster write failed meeting=%s error=%s", meeting_id, exc.message)
            except Exception:
                log.exception("roster write failed meeting=%s", meeting_id)
            finally:
                self._roster_writes.task_done()

    # --- sockets ----------------------------------------------------------------------------

    async def socket_opened(self, queue_id: str, user_id: str) -> None:
        try:
            await self.node.sockets.add(queue_id, user_id, self.node.node_id)
        except ClusterUnavailable as exc:  # it serves this node's joins; other nodes refuse it
            log.warning("socket not in the cluster directory queue=%s error=%s", queue_id, exc.message)

    async def _know_queue(self, queue_id: str) -> None:
        """Before a join checks `hub.session(queue_id)`: a socket of another node is looked up."""
        if self.hub.local_session(queue_id) is not None:
            return
        self.hub.expect_remote(queue_id)
        try:
            entry = await self.node.sockets.lookup(queue_id)
        except BaseException:
            self.hub.confirm_remote(queue_id, None)
            raise
        self.hub.confirm_remote(queue_id, entry.user_id if entry is not None else None)

    async def socket_closed(self, queue_id: str) -> None:
        """A socket of this node closed: out of the directory first (a join looking it up after
        this finds it closed), then a leave on every node holding a meeting joined from it."""
        try:
            await self.node.sockets.remove(queue_id)
        except ClusterUnavailable as exc:
            log.warning("closed socket not removed from the directory queue=%s error=%s", queue_id, exc.message)
        await self._local_socket_closed(queue_id)
        await self._tell_others_closed([queue_id])

    async def _local_socket_closed(self, queue_id: str) -> None:
        self.hub.forget_remote(queue_id)
        await MeetingService.socket_closed(self, queue_id)

    async def _tell_others_closed(self, queue_ids: list[str]) -> None:
        try:
            nodes = [e.node_id for e in await self.node.registry.live() if e.node_id != self.node.node_id]
        except ClusterUnavailable as exc:
            log.warning("closed sockets not relayed queues=%d error=%s", len(queue_ids), exc.message)
            return
        relay = self.node.relay
        results = await asyncio.gather(
            *(relay.call(n, "socket_closed", {"queue_ids": queue_ids}, timeout=RELAY_TIMEOUT) for n in nodes),
            return_exceptions=True,
        )
        for node_id, result in zip(nodes, results, strict=True):
            if isinstance(result, Exception):
                log.warning("closed sockets not relayed node=%s error=%s", node_id, result)

    async def sockets_lost(self, dead_node: str, sockets: list[SocketEntry]) -> None:
        """The sockets of a dead node closed with it: their joins leave, on every live node."""
        queue_ids = [s.queue_id for s in sockets]
        for queue_id in queue_ids:
            await self._local_socket_closed(queue_id)
        await self._tell_others_closed(queue_ids)

    # --- takeover ---------------------------------------------------------------------------

    async def stop_orphan(self, meeting_id: str, roster: dict[str, str]) -> None:
        """A dead node's meeting stops as by a stop: the store first (a failure raises before
        any event, and the takeover is tried again), then LEFT per participant, then STOPPED."""
        async with self._lock(meeting_id):
            if meeting_id in self._live:
                return  # runs here: it is not the dead node's
            row = await self.store.get_meeting(meeting_id)
            if row is None:
                return
            stored = await self.store.members_of_room(row.room_id)
            waiting = [w.user_id for w in await self.store.waiting_of_meeting(meeting_id)]
            await self.store.clear_waiting(meeting_id)
            # The claim goes before STOPPED does: whoever reads STOPPED may start it again at once,
            # and a start must not find the claim still held for the meeting that stopped.
            await self.node.roster.clear(meeting_id)
            await self.node.claims.release(meeting_id, self.node.node_id)
            for user_id in sorted(roster):
                self.hub.to_room_members(
                    row.room_id, make_event("MEETING_PARTICIPANT_LEFT", meetingId=meeting_id, userId=user_id), stored
                )
            self.hub.to_room_members(
                row.room_id, make_event("MEETING_STOPPED", meetingId=meeting_id), stored, also=waiting
            )
            log.warning("meeting of a dead node stopped meeting=%s participants=%d", meeting_id, len(roster))

    async def drop_meeting(self, meeting_id: str) -> None:
        """This node runs a meeting it no longer owns: it goes quietly (its owner, or the
        survivor that stopped it, spoke for it)."""
        async with self._lock(meeting_id):
            live = self._live.pop(meeting_id, None)
            if live is None:
                return
            with contextlib.suppress(Exception):
                await self.media.close_meeting(meeting_id)
            log.warning("meeting dropped, owned elsewhere meeting=%s", meeting_id)
