"""The cluster layer over Redis (DESIGN section 9.2): many nodes, one API, one set of meetings.

One small class per concept, each over one `RedisLink` (redis-py's asyncio client, every command
bounded in time, ClusterUnavailable when Redis cannot be reached):

- `NodeRegistry`   live nodes, their HTTP address and load, refreshed every 2 s, dead after 10 s;
- `Claims`         meeting -> node, taken atomically (SET NX in a script), released on stop;
- `SocketDirectory` open /events sockets: queueId -> (user, node);
- `Roster`         each active meeting's participants (user -> queueId), kept by its owner;
- `Relay`          request/answer between nodes (as LiveKit's psrpc over Redis), errors as data;
- `EventBus`       events with their `Audience`, to every node, each delivering to its sockets;
- `TakeoverWatcher` a survivor stops each meeting of a dead node, exactly once.

Wiring plan for the async domain (facade `MeetingService`, operations
`async def op(principal, meeting_id, ...)` returning JSON-able data or raising ApiError):

Start-up (cli `_serve`, app start-up). `check_cluster_settings` refuses cluster mode without
`[storage] database_url` or `[auth] jwt_secret`. With `[cluster] redis_url`: one RedisLink;
`node = startup.node_id(config)`; NodeRegistry(link, node, address=f"http://{host}:{port}",
load=<meetings, participants, peer connections from the media service>).start(); Relay.serve(
dispatch); EventBus(link, node, deliver).start(); TakeoverWatcher(...).start(). Shut-down in the
reverse order: the node's own meetings are stopped (claims released) before `registry.stop()`,
which then removes the entry (a node stopped with claims left is marked dead at once, so the
watchers take them over without waiting 10 s).

Which operations are relayed. A facade operation about an active meeting runs on the meeting's
owner: a thin `ClusteredMeetingService` in front of the facade asks `claims.owner(meeting_id)`;
when it is another node it returns `await relay.call(owner, op_name, {"principal": ...,
"meeting_id": ..., args...})`, else it calls the local facade. That covers join, leave, the
waiting-room decisions (queue accept/reject), audio/media/screen changes, the SDP offers and
answers, subscribe, recording start/stop, and stop; `get meeting` too when its answer includes
the live participants. Calls that touch only durable state (create, list, update, delete of an
inactive meeting, rooms) run on any node against PostgreSQL. `start`: the node that gets it picks
`registry.least_loaded()`, `claims.claim(meeting_id, that_node)`; whoever the claim names
(that node, or the one that won a concurrent start) carries the start out, relayed when it is
another node; a meeting whose claim names a dead node answers 503 until the takeover released
it (within 20 s). The dispatch handler on the owner re-checks that it still owns the meeting and
calls the same facade method; the principal crosses as plain data (user id, name, grants), so
the owner applies the same checks in the same order and raises the same ApiError: the Relay
carries (status, code, message) and the caller re-raises ApiError, so the relayed answer has the
same status and body as a local one. SDP answers are made by the owner's workers, so they carry
the owner's candidates: media goes straight to the owner.

Join with a remote queue-id. The node that receives `join` checks the header: a local socket in
its EventHub, else `sockets.lookup(queue_id)`; it must exist, be on a live node, and belong to
the caller's user (else 400, as today). The join is then relayed to the owner with the queue id;
the owner adds the participant to its memory and `roster.add(meeting, user, queue)` (and
`roster.remove` on leave; `roster.clear` on stop, with `claims.release`).

Socket close on A. Each socket is `sockets.add(queue, user, node)` when it opens and
`sockets.remove(queue)` when it closes; the close also becomes, for each meeting joined from it,
a `leave` carried out by the meeting's owner: A keeps, per socket, the meetings joined from it
(the owner's join answer tells A, or A asks each owner via the relay op "socket_closed"
{queue_id, user_id}; the owner leaves the participant whose queue it is). When A dies instead,
the watcher's `on_sockets_lost(node, sockets)` gives the same list to a survivor, which relays
"socket_closed" to the owners of the meetings those participants are in.

Events. Every `hub.to_*` call of the domain becomes `bus.publish(Audience.<kind>(...), event)`:
`to_room_members(room, also)` -> Audience.room_members(room, also); `to_room_owners(room,
also_queue)` -> Audience.room_owners(...); `to_users(ids)` -> Audience.users(ids) (for a
meeting's participants, Audience.participants(meeting, ids), named by the owner); `to_queue(q)`
-> Audience.queue(q). Each node's `deliver(audience, event)` calls its own EventHub's method of
the same kind, which applies section 4's rules to its own sockets (room members by each
socket's own token grants and the stored memberships). The publishing node delivers locally at
once; the bus carries the event to the others in order.

Takeover. `on_takeover(meeting_id, roster)` on the survivor: the facade's stop for a meeting it
does not hold in memory: publish MEETING_PARTICIPANT_LEFT for each user of the roster (audience
room members of the meeting's room), mark the meeting inactive in the store, clear its waiting
queue, publish MEETING_STOPPED (room members + waiting users); the watcher then clears the roster
and releases the claim, and the meeting can be started again on a live node. The watcher is also
given `local_meetings` (the ids of the meetings running here) and `on_claim_lost(meeting_id)`:
a node that was taken for dead while it lived (cut from Redis for more than 10 s) tears those
meetings down locally (media, memory; no events: the survivor sent them), so that no meeting
runs on two nodes. `on_sockets_lost(node, sockets)`: see "Socket close on A".

Where 503s come from. ClusterUnavailable is an ApiError (503, "cluster_unavailable"), so the app's
error middleware renders it as JSON like every other error; it is raised within about 2-3 s by any
Redis command (RedisLink.run) and by a relayed call that times out or finds no subscriber.
StoreUnavailable (control_api/storage) is mapped to 503 ("store_unavailable") by the same
middleware. A relayed call whose owner hit StoreUnavailable comes back as its 503 data.
"""

from __future__ import annotations

from .bus import Audience, EventBus
from .claims import Claims
from .errors import ClusterUnavailable
from .link import Keys, RedisLink
from .registry import NodeEntry, NodeLoad, NodeRegistry
from .relay import Relay
from .roster import Roster
from .sockets import SocketDirectory, SocketEntry
from .startup import check_cluster_settings, node_id
from .subscriber import Subscription
from .takeover import TakeoverWatcher

__all__ = [
    "Audience",
    "Claims",
    "ClusterUnavailable",
    "EventBus",
    "Keys",
    "NodeEntry",
    "NodeLoad",
    "NodeRegistry",
    "RedisLink",
    "Relay",
    "Roster",
    "SocketDirectory",
    "SocketEntry",
    "Subscription",
    "TakeoverWatcher",
    "check_cluster_settings",
    "node_id",
]
