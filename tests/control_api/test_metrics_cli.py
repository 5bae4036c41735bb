"""Operations (DESIGN sections 2 and 10): /metrics, the `meeting-sfu token` CLI, configuration."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_api.cli import main
from control_api.config import ConfigError, load_config
from tests.helpers import SECRET, new_id, start_server

from .support import is_error, started_meeting, user

ROOT = Path(__file__).resolve().parents[2]


async def _scrape(server, headers=None) -> dict[tuple[str, tuple], float]:
    async with server.http.get(server.url + "/metrics", headers=headers or {}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_gauges_follow_meetings_participants_sockets_and_waiting(server):
    before = await _scrape(server)
    for gauge in ("meetings_active", "participants", "websocket_sessions", "waiting_users"):
        assert _value(before, f"meeting_sfu_{gauge}") == 0, gauge
    room = new_id()
    olga = await user(server, {room: "owner"})
    max_ = await user(server, {room: "member"})
    gina = await user(server, guest=True)
    meeting = await started_meeting(olga, room, "scheduled")
    mid = meeting["id"]
    await olga.join(mid)
    await gina.join(mid)
    await max_.join(mid)
    await olga.call("POST", f"/meetings/{mid}/queue/{max_.id}", {"status": "ACCEPTED"})
    await max_.join(mid)
    now = await _scrape(server)
    assert _value(now, "meeting_sfu_meetings_active") == 1
    assert _value(now, "meeting_sfu_participants") == 2
    assert _value(now, "meeting_sfu_websocket_sessions") == 3
    assert _value(now, "meeting_sfu_waiting_users") == 1
    await max_.ws.close()
    await olga.ws.wait("MEETING_PARTICIPANT_LEFT")
    now = await _scrape(server)
    assert _value(now, "meeting_sfu_participants") == 1
    assert _value(now, "meeting_sfu_websocket_sessions") == 2
    await olga.call("POST", f"/meetings/{mid}/stop")
    now = await _scrape(server)
    assert _value(now, "meeting_sfu_meetings_active") == 0
    assert _value(now, "meeting_sfu_participants") == 0
    assert _value(now, "meeting_sfu_waiting_users") == 0
    assert _value(now, "meeting_sfu_events_sent_total") > 0


async def test_http_requests_are_counted_by_route_pattern_and_status(server):
    tok = server.token(new_id())
    mid = new_id()
    before = await _scrape(server)
    for _ in range(3):
        assert (await server.call("GET", f"/meetings/{mid}", tok))[0] == 404
    assert (await server.call("GET", "/meetings", tok))[0] == 200
    assert (await server.call("GET", "/meetings"))[0] == 401
    assert (await server.call("GET", "/nowhere"))[0] == 404
    after = await _scrape(server)

    def delta(route, method, status):
        labels = {"route": route, "method": method, "status": status}
        return _value(after, "meeting_sfu_http_requests_total", **labels) - _value(
            before, "meeting_sfu_http_requests_total", **labels
        )

    assert delta("/meetings/{meetingId}", "GET", "404") == 3
    assert delta("/meetings", "GET", "200") == 1
    assert delta("/meetings", "GET", "401") == 1
    # raw paths and ids never become labels
    assert not any(mid in str(labels) for _, labels in after)
    assert not any("/nowhere" in str(labels) for _, labels in after)
    count = "meeting_sfu_http_request_duration_seconds_count"
    assert (
        _value(after, count, route="/meetings/{meetingId}") - _value(before, count, route="/meetings/{meetingId}") == 3
    )
    buckets = [k for k in after if k[0] == "meeting_sfu_http_request_duration_seconds_bucket"]
    assert buckets and all(dict(labels)["route"] != mid for _, labels in buckets)


async def test_metrics_token_is_enforced_when_set(tmp_path):
    server = await start_server(tmp_path, metrics={"token": "scrape-me"})
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-me"}):
            status, body = await server.call("GET", "/metrics", headers=headers)
            assert status == 401 and is_error(body), headers
        # a user's JWT is not the metrics token
        status, _ = await server.call("GET", "/metrics", server.token(new_id()))
        assert status == 401
        samples = await _scrape(server, {"Authorization": "Bearer scrape-me"})
        assert ("meeting_sfu_meetings_active", ()) in samples
    finally:
        await server.stop()


async def test_metrics_can_be_disabled(tmp_path):
    server = await start_server(tmp_path, metrics={"enabled": False})
    try:
        status, body = await server.call("GET", "/metrics")
        assert status == 404 and is_error(body)
    finally:
        await server.stop()


async def test_metrics_need_no_token_by_default(server):
    samples = await _scrape(server)
    assert any(name.startswith("meeting_sfu_") for name, _ in samples)


def _cli_token(capsys, argv) -> str:
    assert main(argv) == 0
    out = capsys.readouterr().out.strip()
    assert out.count(".") == 2 and "\n" not in out
    return out


async def test_cli_token_with_configured_secret_is_accepted(tmp_path, capsys, monkeypatch):
    for name in list(os.environ):
        if name.startswith("MEETING_SFU_"):
            monkeypatch.delenv(name)
    config = tmp_path / "meeting-sfu.toml"
    config.write_text(f'[auth]\njwt_secret = "{SECRET}"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    uid, room = new_id(), new_id()
    token = _cli_token(
        capsys, ["token", "--config", str(config), "--user", uid, "--name", "Ann", "--room", f"{room}:owner"]
    )
    server = await start_server(tmp_path)
    try:
        principal = server.authority.verify(token)
        assert principal.user_id == uid and principal.name == "Ann" and dict(principal.grants) == {room: "owner"}
        status, meeting = await server.call(
            "POST", "/meetings", token, {"name": "cli", "roomId": room, "meetingType": "permanent"}
        )
        assert status == 200, meeting
        # the grant is real: owner-only operations work
        assert (await server.call("GET", f"/meetings/{meeting['id']}/queue", token))[0] == 200
    finally:
        await server.stop()


async def test_cli_token_with_generated_secret_is_accepted(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("MEETING_SFU_STORAGE_DATA_DIR", str(data))
    monkeypatch.delenv("MEETING_SFU_AUTH_JWT_SECRET", raising=False)
    uid, room = new_id(), new_id()
    server = await start_server(tmp_path, auth={"jwt_secret": ""})  # generates and keeps it
    assert (data / "jwt_secret").exists()
    try:
        token = _cli_token(capsys, ["token", "--user", uid, "--room", f"{room}:member", "--ttl", "60"])
        assert await server.call("GET", "/meetings", token) == (200, [])
        # a second token from the same (kept) secret works too
        again = _cli_token(capsys, ["token", "--user", new_id()])
        assert (await server.call("GET", "/meetings", again))[0] == 200
    finally:
        await server.stop()


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "--user", "not-a-uuid"],
        ["token", "--user", "{uid}", "--room", "{uid}:admin"],
        ["token", "--user", "{uid}", "--room", "room:owner"],
        ["token"],
    ],
)
def test_cli_rejects_bad_arguments(argv, capsys):
    uid = new_id()
    with pytest.raises(SystemExit) as exc:
        main([a.format(uid=uid) for a in argv])
    assert exc.value.code == 2
    assert capsys.readouterr().out == ""


def test_env_overrides_file_and_defaults(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[metrics]\nenabled = true\n')
    loaded = load_config(
        config,
        env={
            "MEETING_SFU_SERVER_PORT": "12345",
            "MEETING_SFU_SERVER_CORS_ORIGINS": "https://a.example, https://b.example",
            "MEETING_SFU_SERVER_MAX_BODY_BYTES": "2048",
            "MEETING_SFU_METRICS_ENABLED": "false",
            "MEETING_SFU_STORAGE_DATA_DIR": str(tmp_path / "d"),
            "MEETING_SFU_MEDIA_ICE_ADDRESSES": "127.0.0.1,10.0.0.1",
            "UNRELATED": "x",
        },
    )
    assert loaded.server.port == 12345 and loaded.server.host == "0.0.0.0"
    assert loaded.server.cors_origins == ("https://a.example", "https://b.example")
    assert loaded.server.max_body_bytes == 2048
    assert loaded.metrics.enabled is False
    assert loaded.data_path == tmp_path / "d"
    assert loaded.media.ice_addresses == ("127.0.0.1", "10.0.0.1")
    defaults = load_config(env={})
    assert (defaults.server.host, defaults.server.port) == ("127.0.0.1", 10000)
    assert defaults.server.max_body_bytes == 1024 * 1024 and defaults.server.cors_origins == ()
    with pytest.raises(ConfigError):
        load_config(env={"MEETING_SFU_SERVER_PORT": "http"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
async def test_serve_listens_on_the_port_from_the_environment(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEETING_SFU_")}
    env.update(
        MEETING_SFU_SERVER_PORT=str(port),
        MEETING_SFU_STORAGE_DATA_DIR=str(tmp_path / "data"),
        MEETING_SFU_AUTH_JWT_SECRET=SECRET,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "control_api.cli", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.poll() is None, proc.stderr.read().decode()
                await asyncio.sleep(0.1)
            else:
                pytest.fail("server did not come up")
            from control_api.auth import TokenAuthority

            tok = TokenAuthority(SECRET).mint(new_id())
            async with http.get(f"http://127.0.0.1:{port}/meetings", headers={"Authorization": f"Bearer {tok}"}) as r:
                assert r.status == 200 and await r.json() == []
        assert (tmp_path / "data" / "meeting-sfu.sqlite3").exists()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
