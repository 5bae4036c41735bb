"""`[server] base_path` (DESIGN section 10): the API, /events and /openapi.json also answer under
a prefix such as /services/chats, where Carbonio's proxy sends its web clients, which send the
ZM_AUTH_TOKEN cookie and a queue-id header on every call. The unprefixed routes stay."""

from __future__ import annotations

import subprocess
import sys

import pytest

from control_api.config import ConfigError, load_config
from tests.helpers import new_id, start_server

BASE = "/services/chats"


@pytest.fixture
async def prefixed(tmp_path):
    handle = await start_server(tmp_path, server={"base_path": BASE})
    try:
        yield handle
    finally:
        await handle.stop()


class CarbonioClient:
    """Calls as Carbonio's web client makes them: cookie, queue-id on every call, the prefix."""

    def __init__(self, server, token: str) -> None:
        self.server = server
        self.token = token
        self.queue_id = ""
        self.ws = None

    async def connect(self) -> None:
        self.ws = await self.server.events(self.token, via="cookie", path=BASE + "/events")
        self.queue_id = self.ws.queue_id

    async def call(self, method: str, path: str, body=None):
        headers = {"Cookie": f"ZM_AUTH_TOKEN={self.token}", "queue-id": self.queue_id}
        return await self.server.call(method, BASE + path, None, body, headers=headers)


@pytest.mark.parametrize(
    "value", ["services/chats", "/services/chats/", "/", "/services chats", "/a//b", "/a/../b", "/a?b", "/{x}"]
)
def test_bad_base_path_is_a_config_error_naming_the_key(tmp_path, value):
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\nbase_path = "{value}"\n')
    with pytest.raises(ConfigError, match=r"\[server\] base_path"):
        load_config(config, env={})


def test_bad_base_path_stops_the_cli_with_one_line(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[server]\nbase_path = "services/chats/"\n')
    done = subprocess.run(
        [sys.executable, "-m", "control_api.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "base_path" in lines[0], done.stderr


def test_good_base_paths_load(tmp_path):
    assert load_config(None, env={}).server.base_path == ""
    for value in ("/services/chats", "/x", "/a.b/c-d_e~f"):
        assert load_config(None, env={"MEETING_SFU_SERVER_BASE_PATH": value}).server.base_path == value


async def test_a_whole_meeting_through_the_prefix_with_cookie_and_queue_id(prefixed):
    server = prefixed
    room = new_id()
    olga = CarbonioClient(server, server.token(new_id(), {room: "owner"}, name="Olga"))
    guest_id = new_id()
    guest = CarbonioClient(server, server.token(guest_id, name="Gina", guest=True))
    await olga.connect()
    await guest.connect()

    status, meeting = await olga.call(
        "POST", "/meetings", {"name": "weekly", "roomId": room, "meetingType": "scheduled"}
    )
    assert status == 200, meeting
    mid = meeting["id"]
    await olga.ws.wait("MEETING_CREATED")
    assert (await olga.call("GET", "/meetings"))[1][0]["id"] == mid
    assert await guest.call("GET", f"/public/meetings/{mid}") == (200, {"name": "weekly"})
    status, body = await olga.call("POST", f"/meetings/{mid}/start")
    assert status == 200 and body["active"], body
    join = {"audioStreamEnabled": False, "videoStreamEnabled": False}
    assert await olga.call("POST", f"/meetings/{mid}/join", join) == (200, {"status": "ACCEPTED"})
    assert await guest.call("POST", f"/meetings/{mid}/join", join) == (200, {"status": "WAITING"})
    waiting = await olga.ws.wait("MEETING_WAITING_PARTICIPANT_JOINED")
    assert (waiting["userId"], waiting["name"]) == (guest_id, "Gina")
    assert await olga.call("GET", f"/meetings/{mid}/queue") == (200, {"users": [guest_id], "names": {guest_id: "Gina"}})
    assert (await olga.call("POST", f"/meetings/{mid}/queue/{guest_id}", {"status": "ACCEPTED"}))[0] == 204
    await guest.ws.wait("MEETING_WAITING_PARTICIPANT_ACCEPTED")
    assert await guest.call("POST", f"/meetings/{mid}/join", join) == (200, {"status": "ACCEPTED"})
    await olga.ws.wait("MEETING_PARTICIPANT_JOINED", lambda e: e["userId"] == guest_id)
    # Muting oneself while muted is a no-op 204 (with a queue-id header, as on every call).
    assert (await guest.call("PUT", f"/meetings/{mid}/audio", {"enabled": False}))[0] == 204
    status, body = await guest.call("GET", f"/meetings/{mid}")
    assert status == 200 and {p.get("name") for p in body["participants"]} == {"Olga", "Gina"}
    assert (await guest.call("POST", f"/meetings/{mid}/leave"))[0] == 204
    await olga.ws.wait("MEETING_PARTICIPANT_LEFT", lambda e: e["userId"] == guest_id)
    status, body = await olga.call("POST", f"/meetings/{mid}/stop")
    assert status == 200 and not body["active"]
    await olga.ws.wait("MEETING_STOPPED")
    assert (await olga.call("DELETE", f"/meetings/{mid}"))[0] == 204
    await olga.ws.wait("MEETING_DELETED")
    # The unprefixed routes stay, and an unknown queue-id on a call other than join is ignored.
    status, body = await server.call(
        "GET", "/meetings", olga.token, headers={"queue-id": "not-a-uuid"}
    )
    assert (status, body) == (200, [])


async def test_errors_and_auth_hold_under_the_prefix(prefixed):
    server = prefixed
    status, body = await server.call("GET", BASE + "/meetings")
    assert status == 401 and body["error"] == "unauthorized"
    status, body = await server.call("GET", BASE + "/meetings/not-a-uuid", server.token(new_id()))
    assert status == 400
    status, body = await server.call("GET", BASE + "/nowhere")
    assert status == 404 and body["error"] == "not_found"
    # /health, /metrics and the demo are not under the prefix.
    assert (await server.call("GET", BASE + "/health"))[0] == 404
    assert (await server.call("GET", "/health"))[0] == 200


async def test_openapi_servers_name_the_host_and_the_prefix(prefixed):
    server = prefixed
    status, doc = await server.call("GET", BASE + "/openapi.json")
    assert status == 200
    assert doc["servers"] == [{"url": server.url + BASE}]
    # Health, metrics and the demo token stay at the root: their own servers say so.
    for path in ("/health", "/metrics", "/demo/token"):
        assert doc["paths"][path]["servers"] == [{"url": server.url}], path
    status, doc = await server.call("GET", "/openapi.json", headers={"Host": "meet.example:8443"})
    assert doc["servers"] == [{"url": "http://meet.example:8443"}]
    assert "servers" not in doc["paths"]["/health"]


async def test_openapi_leaves_out_what_is_off(tmp_path):
    server = await start_server(tmp_path, metrics={"enabled": False}, demo={"enabled": False})
    try:
        _, doc = await server.call("GET", "/openapi.json")
        assert "/metrics" not in doc["paths"] and "/demo/token" not in doc["paths"]
        assert "/health" in doc["paths"] and "/events" in doc["paths"]
    finally:
        await server.stop()
