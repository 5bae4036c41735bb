"""The meeting rules, one module per concept (DESIGN §3-§7):

- state.py: the live meetings of this node, per-meeting locks, the shared checks
- lifecycle.py: create, read, start, stop, delete, expire
- joins.py: join, leave, clash, a closed events socket
- waiting_room.py: the queue of a scheduled meeting, accept and reject
- media.py: publishing, subscriptions, SDP answers, audio, the media plane's events
- recordings.py: start, stop, finalise and recover recordings
- rendering.py: the JSON bodies
- service.py: MeetingService, the facade the handlers call, and its contract
"""

from .media import MEDIA_STATUS, media_status
from .service import MEETING_OPERATIONS, MeetingService
from .state import ACCEPTED, PERMANENT, REJECTED, SCHEDULED, WAITING

__all__ = [
    "ACCEPTED",
    "MEDIA_STATUS",
    "MEETING_OPERATIONS",
    "PERMANENT",
    "REJECTED",
    "SCHEDULED",
    "WAITING",
    "MeetingService",
    "media_status",
]
