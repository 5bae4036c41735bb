"""Configuration loading and the CLI around it: checked values, environment variables, paths
relative to their file, a `token` command that never invents a secret, --help and --version."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from control_api.cli import main
from control_api.config import ConfigError, load_config
from control_api.logs import JsonFormatter, KeyValueFormatter, setup_logging
from tests.helpers import new_id

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[server]\nport = 99999\n", ["[server] port", "1 to 65535", "99999"]),
        ("[server]\nport = 0\n", ["[server] port", "1 to 65535"]),
        ("[server]\nport = 10.5\n", ["[server] port", "an integer"]),
        ('[logging]\nlevel = "verbose"\n', ["[logging] level", "debug, info, warning, error"]),
        ('[logging]\nformat = "xml"\n', ["[logging] format", "keyvalue, json"]),
        ("[server]\nnope = 1\n", ["unknown setting [server] nope"]),
        ("[nope]\nx = 1\n", ["unknown section [nope]"]),
        ('[demo]\nenabled = "yes please"\n', ["[demo] enabled", "true or false"]),
        ("[meetings]\nmax_events_queue = 0\n", ["[meetings] max_events_queue", "at least 1"]),
    ],
)
def test_a_bad_value_in_the_file_names_the_key_and_the_file(tmp_path, toml, expected):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    for part in expected:
        assert part in str(exc.value), (part, str(exc.value))
    assert str(path) in str(exc.value)


def test_unknown_variables_warn_naming_them_and_bad_known_ones_name_the_variable():
    warnings: list[str] = []
    env = {
        "MEETING_SFU_SERVICE_HOST": "10.0.0.7",  # Kubernetes, for a Service named meeting-sfu
        "MEETING_SFU_SERVICE_PORT": "10000",
        "MEETING_SFU_SERVER_NOPE": "1",
        "MEETING_SFU_SERVER_PORT": "10001",
        "MEETING_SFU_FASTPATH": "0",  # read by sfu/fastpath.py: not a setting, not warned about
        "MEETING_SFU_LEAN_RECEIVE": "0",  # the same
        "MEETING_SFU_LEAN_RTCP": "0",  # the same
    }
    config = load_config(env=env, warn=warnings.append)
    assert config.server.port == 10001
    assert len(warnings) == 1
    for name in ("MEETING_SFU_FASTPATH", "MEETING_SFU_LEAN_RECEIVE", "MEETING_SFU_LEAN_RTCP"):
        assert name not in warnings[0]
    for name in ("MEETING_SFU_SERVICE_HOST", "MEETING_SFU_SERVICE_PORT", "MEETING_SFU_SERVER_NOPE"):
        assert name in warnings[0]
    assert "MEETING_SFU_SERVER_PORT" not in warnings[0].split("(")[0]
    for name, value, expected in [
        ("MEETING_SFU_SERVER_PORT", "http", "an integer"),
        ("MEETING_SFU_SERVER_PORT", "70000", "1 to 65535"),
        ("MEETING_SFU_LOGGING_LEVEL", "loud", "one of debug"),
        ("MEETING_SFU_METRICS_ENABLED", "maybe", "true or false"),
    ]:
        with pytest.raises(ConfigError) as exc:
            load_config(env={name: value}, warn=warnings.append)
        message = str(exc.value)
        assert message.startswith(name + ":") and expected in message and repr(value) in message


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path, monkeypatch):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "node.toml").write_text('[storage]\ndata_dir = "state"\n[recording]\ndir = "../rec"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../etc/node.toml"), env={})
    assert config.data_path.resolve() == etc / "state"
    assert config.recording_path.resolve() == tmp_path / "rec"
    # Absolute paths stay; a variable (no file) is relative to the working directory.
    (etc / "abs.toml").write_text(f'[storage]\ndata_dir = "{tmp_path / "abs"}"\n')
    assert load_config(etc / "abs.toml", env={}).data_path == tmp_path / "abs"
    config = load_config(etc / "node.toml", env={"MEETING_SFU_STORAGE_DATA_DIR": "here"})
    assert config.data_path == Path("here")


def test_token_never_creates_a_secret_and_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for k in [k for k in os.environ if k.startswith("MEETING_SFU_")]:
        monkeypatch.delenv(k)
    assert main(["token", "--user", new_id()]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "data" / "jwt_secret") in err
    assert "--config" in err and "--data-dir" in err
    assert not (tmp_path / "data").exists()
    # Pointed at the server's data directory, or at its configuration, it signs with its secret.
    server_data = tmp_path / "srv" / "data"
    server_data.mkdir(parents=True)
    (server_data / "jwt_secret").write_text("s3cret-of-the-server-0123456789-0123456789\n")
    (tmp_path / "srv" / "node.toml").write_text('[storage]\ndata_dir = "data"\n')
    from control_api.auth import TokenAuthority

    check = TokenAuthority("s3cret-of-the-server-0123456789-0123456789")
    uid = new_id()
    for args in (["--data-dir", str(server_data)], ["--config", "srv/node.toml"]):
        assert main(["token", "--user", uid, *args]) == 0
        assert check.verify(capsys.readouterr().out.strip()).user_id == uid
    assert not (tmp_path / "data").exists()
    # A secret file that cannot be read is one line too, not a traceback.
    (tmp_path / "odd" / "jwt_secret").mkdir(parents=True)
    assert main(["token", "--user", uid, "--data-dir", str(tmp_path / "odd")]) == 2
    assert "cannot read" in capsys.readouterr().err


def _help(*argv: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "control_api.cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("command", ["serve", "token", "bench"])
def test_every_help_has_a_description_defaults_and_the_environment_without_markdown(command):
    text = _help(command, "--help")
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: meeting-sfu {command}")
    description = rest.split("\n\n")[0]
    assert len(description) > 40 and not description.startswith(("options", "-")), description
    assert "default" in text
    assert "MEETING_SFU_" in text
    for markdown in ("`", "**", "\n#", "\\\n"):
        assert markdown not in text, markdown


def test_version():
    assert _help("--version").strip() == "meeting-sfu 0.1.0"


def _record(message: str, name: str = "meeting_sfu") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)


def test_json_logs_carry_the_message_and_each_field_as_keys():
    line = JsonFormatter().format(_record("meeting created meeting=m-1 room=r-1"))
    body = json.loads(line)
    assert body["msg"] == "meeting created" and body["meeting"] == "m-1" and body["room"] == "r-1"
    assert body["level"] == "info" and body["logger"] == "meeting_sfu" and body["ts"].endswith("Z")
    body = json.loads(JsonFormatter().format(_record("waiting for x=(1, 2)")))
    assert body["msg"] == "waiting for x=(1, 2)"  # not a field list: kept whole
    kv = KeyValueFormatter().format(_record("participant joined meeting=m-1 user=u-1"))
    assert kv.endswith("msg='participant joined' meeting=m-1 user=u-1")


def test_ice_and_webrtc_chatter_is_kept_at_debug():
    root = logging.getLogger()
    names = ("aioice", "aiortc", "aiohttp.access")
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in names})
    try:
        setup_logging("info", "keyvalue")
        for name in ("aioice.ice", "aiortc.rtcpeerconnection", "aiortc.rtcdtlstransport"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
            assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
        assert logging.getLogger("meeting_sfu").isEnabledFor(logging.INFO)
        setup_logging("debug", "keyvalue")
        assert logging.getLogger("aioice.ice").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


def test_setup_recreates_a_venv_made_by_an_unsuitable_interpreter(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "setup").write_text((ROOT / "scripts" / "setup").read_text())
    (repo / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    fake = repo / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    # A .venv of Python 3.10: it answers the version probe, and is not within 3.11 to 3.13.
    fake.write_text('#!/bin/sh\ncase "$2" in *base_prefix*) echo "/opt/py310 3.10"; exit 0;; esac\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(tmp_path / "no-such-python")}
    proc = subprocess.run(
        ["bash", str(repo / "scripts" / "setup")], env=env, capture_output=True, text=True, timeout=60
    )
    assert "setup: recreating .venv: it was made by Python 3.10" in proc.stderr
    assert not (repo / ".venv").exists()
    # PYTHON points at nothing usable: it says so, and how to fix it.
    assert proc.returncode == 1 and "set PYTHON=" in proc.stderr
