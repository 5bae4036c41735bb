"""The cluster layer's one failure: Redis (or the node a call is relayed to) cannot be reached."""

from __future__ import annotations

from ..errors import ApiError


class ClusterUnavailable(ApiError):
    """Redis is unreachable or too slow, or the node that owns a meeting does not answer in time.

    An ApiError with status 503, so the HTTP layer already answers it as
    `{"error": "cluster_unavailable", "message": ...}` and never as a 500 or a hang.
    """

    def __init__(self, message: str) -> None:
        super().__init__(503, "cluster_unavailable", message)
