"""What cluster mode needs before a node may start, and the node's id (DESIGN section 9.2)."""

from __future__ import annotations

import uuid

from ..config import Config, ConfigError


def check_cluster_settings(config: Config) -> None:
    """Cluster mode (`[cluster] redis_url` set) needs PostgreSQL and a configured JWT secret.

    Each refusal is one line naming the setting. A secret generated in one node's data directory
    would sign tokens that no other node accepts, and SQLite state would be one node's only.
    """
    if not config.cluster.redis_url:
        return
    if not config.storage.database_url:
        raise ConfigError(
            "[storage] database_url: required in cluster mode ([cluster] redis_url is set):"
            " every node keeps its state in one PostgreSQL database, e.g. postgresql://sfu@db:5432/sfu"
        )
    if not config.auth.jwt_secret:
        raise ConfigError(
            "[auth] jwt_secret: required in cluster mode ([cluster] redis_url is set):"
            " every node needs the same secret, set in its configuration (none is generated)"
        )


def node_id(config: Config) -> str:
    """`[cluster] node_id`, or a fresh id for this run."""
    return config.cluster.node_id or uuid.uuid4().hex
