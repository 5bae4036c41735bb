"""[cluster] settings and what `meeting-sfu serve` refuses in cluster mode: one line naming the
setting, exit status 2, before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from control_api.cluster import check_cluster_settings, node_id
from control_api.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_settings_default_to_a_single_node_and_take_variables() -> None:
    assert Config().cluster.redis_url == "" and Config().cluster.node_id == ""
    example = load_config(ROOT / "config.example.toml", env={})
    assert example.cluster == Config().cluster  # the example documents the defaults
    config = load_config(
        env={"MEETING_SFU_CLUSTER_REDIS_URL": "redis://10.0.0.2:6379/1", "MEETING_SFU_CLUSTER_NODE_ID": "node-1"}
    )
    assert (config.cluster.redis_url, config.cluster.node_id) == ("redis://10.0.0.2:6379/1", "node-1")
    assert node_id(config) == "node-1"
    fresh = {node_id(Config()) for _ in range(3)}
    assert len(fresh) == 3  # a fresh id at each start


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MEETING_SFU_CLUSTER_REDIS_URL", "http://redis:6379", "[cluster] redis_url"),
        ("MEETING_SFU_CLUSTER_NODE_ID", "two words", "[cluster] node_id"),
        ("MEETING_SFU_CLUSTER_NODE_ID", "x" * 65, "[cluster] node_id"),
    ],
)
def test_bad_cluster_settings_name_the_setting(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_config(env={variable: value})


def test_cluster_mode_needs_postgresql_and_a_configured_secret() -> None:
    base = Config().with_overrides({"cluster": {"redis_url": "redis://127.0.0.1:6379/0"}})
    with pytest.raises(ConfigError, match=r"\[storage\] database_url"):
        check_cluster_settings(base)
    with_db = base.with_overrides({"storage": {"database_url": "postgresql://sfu@db/sfu"}})
    with pytest.raises(ConfigError, match=r"\[auth\] jwt_secret"):
        check_cluster_settings(with_db)
    check_cluster_settings(with_db.with_overrides({"auth": {"jwt_secret": "s" * 32}}))
    check_cluster_settings(Config())  # a single node needs neither


def _serve(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEETING_SFU_")}
    env.update(MEETING_SFU_STORAGE_DATA_DIR=str(tmp_path / "data"), MEETING_SFU_SERVER_PORT="1", **settings)
    return subprocess.run(
        [sys.executable, "-m", "control_api.cli", "serve"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, ["[storage] database_url", "cluster mode", "[cluster] redis_url"]),
        ({"MEETING_SFU_STORAGE_DATABASE_URL": "postgresql://sfu@127.0.0.1:1/sfu"}, ["[auth] jwt_secret", "mode"]),
    ],
)
def test_serve_refuses_cluster_mode_without_its_settings(tmp_path: Path, settings: dict, expected: list) -> None:
    proc = _serve(tmp_path, MEETING_SFU_CLUSTER_REDIS_URL="redis://127.0.0.1:1/0", **settings)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("meeting-sfu: "), proc.stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert not (tmp_path / "data").exists()  # refused before anything was made (no generated secret)
