"""The load generator against a cluster of 2 nodes on this machine (`--nodes 2`), at a tiny size:
one meeting per node, each node forwards its own meeting's media, the server CPU is the sum of
both nodes, and every process the bench started (nodes, redis-server, PostgreSQL) is gone
afterwards. No timing asserts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import postgres_bindir

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the number
        return True
    return True


def test_two_nodes_each_forward_their_own_meeting_and_every_process_is_gone_after(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/test installs it with apt-get)")
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (scripts/test installs it with apt-get)")
    out = tmp_path / "nodes.json"
    cmd = [
        sys.executable, "-m", "control_api.cli", "bench", "--nodes", "2",
        "--meetings", "2", "--publishers", "1", "--subscribers", "1", "--decoders", "0",
        "--replay", "--width", "160", "--height", "120", "--bitrate", "200000",
        "--processes", "1", "--duration", "1", "--warmup", "0.5", "--quiet", "--json", str(out),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    if not out.exists():
        pytest.fail(f"no report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert "failed" not in run, run
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}"
    assert report["settings"]["nodes"] == 2 and run["nodes"] == 2
    assert run["publishers_ready"] == 2 and run["subscribers_ready"] == 2, run
    assert run["forwarded_pps"] > 0 and run["fps_min"] > 0

    nodes = run["cluster"]["nodes"]
    assert [n["node_id"] for n in nodes] == ["node-0", "node-1"]
    assert len({n["url"] for n in nodes}) == 2 and len({n["pid"] for n in nodes}) == 2
    # Meeting i started through node i % 2 runs there: its clients call it, it sends the media.
    assert [n["meetings"] for n in nodes] == [1, 1]
    assert all(n["rtp_out_pps"] > 0 for n in nodes), nodes
    # Neither node logged an error, up to and through its stop (they log at warning).
    assert [line for n in nodes for line in n["log_tail"] if "level=error" in line or "Traceback" in line] == []
    # The server CPU is both nodes' (each rounded to 1e-3).
    assert run["server_cpu_cores"] == pytest.approx(sum(n["cpu_cores"] for n in nodes), abs=0.003)

    services = run["cluster"]["services"]
    pids = [n["pid"] for n in nodes] + [services["redis"], services["postgres"]]
    assert all(isinstance(pid, int) for pid in pids), services
    assert [pid for pid in pids if _alive(pid)] == []
    dirs = [n["dir"] for n in nodes] + run["cluster"]["service_dirs"]
    assert [d for d in dirs if Path(d).exists()] == []
