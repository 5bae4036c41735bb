"""The README's curl walk-through, run as written against `meeting-sfu serve` (a real process)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    (script,) = [b for b in blocks if "/events" in b and "queue-id" in b]
    return script


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_the_curl_walkthrough_runs_as_written(tmp_path):
    # The walk-through runs from the repository: `.venv/bin/...` and `./data` there. Here a
    # directory of its own stands for it, its .venv being the one running the tests.
    if not (Path(sys.prefix) / "bin" / "meeting-sfu").exists():
        pytest.skip("the tests do not run in a venv with meeting-sfu installed")
    (tmp_path / ".venv").symlink_to(sys.prefix)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEETING_SFU_")}
    env["PYTHONPATH"] = str(ROOT)
    server = subprocess.Popen(
        [sys.executable, "-m", "control_api.cli", "serve"],
        cwd=tmp_path, env={**env, "MEETING_SFU_SERVER_PORT": str(port)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while "serving" not in server.stderr.readline():
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
        script = _walkthrough().replace("URL=http://127.0.0.1:10000", f"URL=http://127.0.0.1:{port}", 1)
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
        )
    finally:
        server.terminate()
        server.wait(15)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '{"status":"ACCEPTED"}' in proc.stdout
    events = [json.loads(line) for line in (tmp_path / "events.log").read_text().splitlines()]
    assert [e["type"] for e in events] == [
        "websocketConnected",
        "MEETING_CREATED",
        "MEETING_STARTED",
        "MEETING_PARTICIPANT_JOINED",
        "MEETING_PARTICIPANT_LEFT",
        "MEETING_STOPPED",
        "MEETING_DELETED",
    ]
