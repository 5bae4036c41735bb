"""`meeting-sfu serve` refuses to start, with a clear message, when aiortc lacks a hooked name."""

import os
import subprocess
import sys

SCRIPT = """
import sys
from aiortc import RTCDtlsTransport
del RTCDtlsTransport._handle_rtp_data  # as if aiortc had renamed it
from control_api.cli import main
sys.exit(main(["serve"]))
"""


def test_serve_fails_fast_when_a_private_aiortc_name_is_missing(tmp_path):
    env = {**os.environ, "MEETING_SFU_STORAGE_DATA_DIR": str(tmp_path / "data"), "MEETING_SFU_SERVER_PORT": "0"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "cannot start" in proc.stderr and "_handle_rtp_data" in proc.stderr
    assert "Traceback" not in proc.stderr
