"""`meeting-sfu serve` as a process: a start-up failure is one line naming the setting and the
cause, with exit status 2 (3 for a missing aiortc private name); "serving" comes once bound."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from aiortc import RTCDtlsTransport
del RTCDtlsTransport._handle_rtp_data  # as if aiortc had renamed it
from control_api.cli import main
sys.exit(main(["serve"]))
"""


def _env(**settings: str) -> dict[str, str]:
    """The environment without the caller's MEETING_SFU_* variables, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEETING_SFU_")}
    env.update(settings)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "control_api.cli", "serve", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, as an operator stops the node; SIGKILL only if it does not end in 15 s."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _immutable(path: Path) -> None:
    """chattr +i: even root cannot write there (permission bits do not stop root)."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")


def _mutable(path: Path) -> None:
    subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_serve_fails_fast_when_a_private_aiortc_name_is_missing(tmp_path):
    env = _env(MEETING_SFU_STORAGE_DATA_DIR=str(tmp_path / "data"), MEETING_SFU_SERVER_PORT=str(_free_port()))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "cannot start" in proc.stderr and "_handle_rtp_data" in proc.stderr
    assert "Traceback" not in proc.stderr


def _port_in_use(tmp_path, stack):
    listener = socket.socket()
    stack.append(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    return {"MEETING_SFU_SERVER_PORT": str(port)}, ["[server] port", f"127.0.0.1:{port}", "already in use"]


def _data_dir_is_a_file(tmp_path, stack):
    (tmp_path / "data").write_text("")
    return {}, ["[storage] data_dir", str(tmp_path / "data"), "not a directory"]


def _data_dir_immutable(tmp_path, stack):
    (tmp_path / "data").mkdir()
    _immutable(tmp_path / "data")
    stack.append(lambda: _mutable(tmp_path / "data"))
    return {}, ["[storage] data_dir", str(tmp_path / "data"), "cannot be written", "not permitted"]


def _data_dir_cannot_be_created(tmp_path, stack):
    (tmp_path / "ro").mkdir()
    _immutable(tmp_path / "ro")
    stack.append(lambda: _mutable(tmp_path / "ro"))
    return {"MEETING_SFU_STORAGE_DATA_DIR": "ro/data"}, ["[storage] data_dir", "ro/data", "cannot be created"]


def _recording_dir_is_a_file(tmp_path, stack):
    (tmp_path / "recordings").write_text("")
    return {"MEETING_SFU_RECORDING_DIR": str(tmp_path / "recordings")}, ["[recording] dir", "not a directory"]


def _database_immutable(tmp_path, stack):
    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "meeting-sfu.sqlite3"
    db.write_bytes(b"")
    _immutable(db)
    stack.append(lambda: _mutable(db))
    return {}, ["[storage] data_dir", str(db), "readonly database"]


def _database_not_sqlite(tmp_path, stack):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meeting-sfu.sqlite3").write_text("these are not the pages of a database\n" * 100)
    return {}, ["[storage] data_dir", "meeting-sfu.sqlite3", "not a database"]


def _database_url_unreachable(tmp_path, stack):
    port = _free_port()  # nobody listens there
    url = f"postgresql://sfu:secret@127.0.0.1:{port}/sfu"
    stack.append(lambda: _no_sqlite_file(tmp_path))  # PostgreSQL configured: no SQLite stands in
    return {"MEETING_SFU_STORAGE_DATABASE_URL": url}, ["[storage] database_url", f"127.0.0.1:{port}/sfu"]


def _no_sqlite_file(tmp_path):
    assert not (tmp_path / "data" / "meeting-sfu.sqlite3").exists()


def _unknown_log_level(tmp_path, stack):
    return {"MEETING_SFU_LOGGING_LEVEL": "verbose"}, ["MEETING_SFU_LOGGING_LEVEL", "'verbose'", "debug, info"]


def _port_out_of_range(tmp_path, stack):
    return {"MEETING_SFU_SERVER_PORT": "99999"}, ["MEETING_SFU_SERVER_PORT", "1 to 65535", "'99999'"]


def _port_zero(tmp_path, stack):
    return {"MEETING_SFU_SERVER_PORT": "0"}, ["MEETING_SFU_SERVER_PORT", "1 to 65535"]


def _bad_boolean(tmp_path, stack):
    return {"MEETING_SFU_DEMO_ENABLED": "maybe"}, ["MEETING_SFU_DEMO_ENABLED", "true or false", "'maybe'"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "case",
    [
        _port_in_use,
        _data_dir_is_a_file,
        _data_dir_immutable,
        _data_dir_cannot_be_created,
        _recording_dir_is_a_file,
        _database_immutable,
        _database_not_sqlite,
        _database_url_unreachable,
        _unknown_log_level,
        _port_out_of_range,
        _port_zero,
        _bad_boolean,
    ],
)
def test_a_start_up_failure_is_one_line_naming_the_setting_with_status_2(tmp_path, case):
    cleanup: list = []
    try:
        settings, expected = case(tmp_path, cleanup)
        env = _env(**{"MEETING_SFU_SERVER_PORT": str(_free_port()), **settings})
        proc = _serve(tmp_path, env)
    finally:
        for undo in cleanup:
            undo()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("meeting-sfu: ")
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert "serving" not in proc.stderr


def _read_until(proc: subprocess.Popen, needle: str, timeout: float = 30) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if needle in line:
            return lines
    pytest.fail(f"no {needle!r} in {lines}")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("demo", [True, False])
def test_serving_is_logged_once_bound_with_the_urls_and_unknown_variables_warn(tmp_path, demo):
    port = _free_port()
    env = _env(
        MEETING_SFU_SERVER_PORT=str(port),
        MEETING_SFU_LOGGING_FORMAT="json",
        MEETING_SFU_DEMO_ENABLED=str(demo).lower(),
        # What Kubernetes injects for a Service named meeting-sfu: not settings, not fatal.
        MEETING_SFU_SERVICE_HOST="10.0.0.7",
        MEETING_SFU_PORT="tcp://10.0.0.7:10000",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "control_api.cli", "serve"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = [json.loads(line) for line in _read_until(proc, '"serving"')]
        warning = next(e for e in lines if e["level"] == "warning")
        assert "MEETING_SFU_SERVICE_HOST" in warning["msg"] and "MEETING_SFU_PORT" in warning["msg"]
        serving = lines[-1]
        assert serving["msg"] == "serving"  # its fields are keys of their own
        assert serving["url"] == f"http://127.0.0.1:{port}"
        assert serving["data_dir"] == str(tmp_path / "data")
        if demo:
            assert serving["demo"] == f"http://127.0.0.1:{port}/demo"
        else:
            assert "demo" not in serving
        # Logged once bound: the very first request is answered, no retry.
        with urllib.request.urlopen(serving["url"] + "/health", timeout=5) as r:
            assert r.status == 200
    finally:
        _terminate(proc)
    assert proc.returncode == 0


@pytest.mark.timeout(60)
def test_scripts_serve_finds_the_config_in_the_callers_directory(tmp_path):
    if not (ROOT / ".venv" / "bin" / "meeting-sfu").exists():
        pytest.skip("scripts/serve runs the repository's .venv, which is not there")
    (tmp_path / "mine.toml").write_text("[server]\nport = 99999\n")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "serve"), "--config", "mine.toml"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    # The file was read (its port is refused), from the caller's directory, not the repository.
    assert f"[server] port (in {tmp_path / 'mine.toml'})" in proc.stderr
    assert "99999" in proc.stderr


def _http(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"Bearer {token}"})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.status, json.loads(r.read() or b"null")


@pytest.mark.timeout(120)
def test_serve_on_postgresql_keeps_its_state_there(tmp_path, postgres_server):
    """A single node may serve on PostgreSQL (DESIGN §9.2): what it answered is in the database,
    found again by a node started afterwards with another data directory, and no SQLite file
    stands in for it."""
    import asyncio

    from control_api.auth import TokenAuthority
    from tests.control_api.test_storage import fresh_database

    url = asyncio.run(fresh_database(postgres_server))
    secret = "s" * 48
    token = TokenAuthority(secret).mint("00000000-0000-4000-8000-000000000001")
    created = None
    for data_dir in ("a", "b"):
        port = _free_port()
        env = _env(
            MEETING_SFU_SERVER_PORT=str(port),
            MEETING_SFU_STORAGE_DATA_DIR=str(tmp_path / data_dir),
            MEETING_SFU_STORAGE_DATABASE_URL=url,
            MEETING_SFU_AUTH_JWT_SECRET=secret,
            MEETING_SFU_MEDIA_WORKERS="1",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "control_api.cli", "serve"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            _read_until(proc, "serving")
            base = f"http://127.0.0.1:{port}"
            if created is None:
                status, created = _http("POST", base + "/meetings", token, {"name": "pg", "meetingType": "permanent"})
                assert status == 200
            else:
                status, listed = _http("GET", base + "/meetings", token)
                assert status == 200 and [m["id"] for m in listed] == [created["id"]]  # type: ignore[index]
        finally:
            _terminate(proc)
        assert proc.returncode == 0
        assert not (tmp_path / data_dir / "meeting-sfu.sqlite3").exists()
