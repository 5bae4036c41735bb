"""MeetingService: the one object the HTTP handlers (and, in a cluster, the relay) call."""

from __future__ import annotations

from typing import Any

from ..auth import Principal
from ..errors import ApiError
from ..storage import AsyncStore
from .joins import Joins
from .lifecycle import Lifecycle
from .media import Media
from .recordings import Recordings
from .state import MeetingState
from .waiting_room import WaitingRoom

# The operations about one meeting, by name: what a cluster layer may carry out on the node
# that owns the meeting. Each is `async def op(principal, meeting_id, *args)`.
MEETING_OPERATIONS = frozenset(
    {
        "get_meeting",
        "delete_meeting",
        "start_meeting",
        "stop_meeting",
        "join",
        "leave",
        "get_queue",
        "update_queued_user",
        "update_media",
        "answer_media",
        "update_subscriptions",
        "update_audio",
        "audio_offer",
        "start_recording",
        "stop_recording",
    }
)


class MeetingService(Lifecycle, Joins, WaitingRoom, Media, Recordings, MeetingState):
    """The rules of the API's operations, over the store, the event hub and the media plane.

    Plain Python, no HTTP: a handler parses a request, calls one method and renders its result.

    The contract of every public operation (what a cluster layer relies on to relay a call to
    the node that owns a meeting and answer "as if local"):

    - An operation about one meeting is `async def op(principal, meeting_id, *args)`, named in
      MEETING_OPERATIONS. `principal` is an auth.Principal (user id, name, guest flag, room
      grants: plain data); every other argument is plain JSON-able data (str, bool, None,
      lists of them; `update_subscriptions` takes lists of [userId, type, quality|None] and
      [userId, type]). `create_meeting`, `list_meetings`, `public_meeting` and `recordings`
      concern no live meeting: any node answers them from the store.
    - It returns plain JSON-able data (a dict, a list, a status string) or None (the handler
      answers 204), and raises errors.ApiError(status, code, message) for every refusal; the
      HTTP body is then {"error": code, "message": message} with that status. A store that
      cannot be reached raises storage.StoreUnavailable (503), before anything changed when it
      happens during the checks.
    - Checks run in DESIGN §8's order (existence 404, rights 403, state 400/409) and nothing
      changes before they all passed; each change to durable state is committed before the
      operation returns.
    - Its events go out through the node's events.EventHub, which delivers them to sockets by
      §4's audience rules; room events carry the room's stored memberships with them, so a
      hub needs no store to decide who is a member.
    - Changes to one meeting are serialised by that meeting's lock (see state.py); the live
      state of a meeting is in memory on this node only.

    - `call(op, principal, meeting_id, *args)` carries out one of them by name: what a relay
      on the owner node calls with the arguments it received as JSON.
    - `join` asks the hub (`hub.session(queue_id)`) whether the queue is an open socket of the
      caller: a cluster's hub answers for the sockets of every node.

    `socket_closed(queue_id)` (an events socket of this node closed) calls
    `queue_closed(meeting_id, queue_id)` for each meeting joined from it: the latter is the
    per-meeting form a cluster relays to the owner node.
    """

    async def call(self, op: str, principal: Principal, meeting_id: str, *args: Any) -> Any:
        """Carry out the operation named `op` about one meeting, as a relay received it: the
        same result, or the same ApiError, as the handlers' direct call."""
        if op not in MEETING_OPERATIONS:
            raise ApiError(400, "bad_request", f"no meeting operation named {op!r}")
        return await getattr(self, op)(principal, meeting_id, *args)

    async def open(self, store: AsyncStore) -> None:
        """Take the store and do what a start means: a restart stops every meeting, so no
        waiting queue and no running recording survive it (cut-short recordings are recovered)."""
        self.store = store
        await store.clear_waiting()
        await self._recover_recordings()

    # --- counts for metrics ----------------------------------------------------------------

    @property
    def active_meetings(self) -> int:
        return len(self._live)

    @property
    def participant_count(self) -> int:
        return sum(len(live.participants) for live in self._live.values())
