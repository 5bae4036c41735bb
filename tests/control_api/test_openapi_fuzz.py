"""The served OpenAPI document is the contract: fuzz the running server against it.

A real server runs in a background thread (its own event loop) on 127.0.0.1. Schemathesis
generates requests for each of the 18 operations (and /health, /demo/token) from GET /openapi.json
(/events is a websocket and /metrics Prometheus text: not fuzzed over plain HTTP); every other case is
aimed at real state (a started scheduled meeting the caller owns, a user waiting in its queue,
the caller's open /events sockets), so positive paths are fuzzed too. Every response must be
documented (status, content type, body schema) and no 5xx may occur, except 501 on media
routes while a part of the media plane is unavailable.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from datetime import UTC, datetime, timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import new_id, start_server

pytestmark = pytest.mark.timeout(120)

MEDIA_ROUTES = {
    "/meetings/{meetingId}/media",
    "/meetings/{meetingId}/media/answer",
    "/meetings/{meetingId}/media/subscribe",
    "/meetings/{meetingId}/audio",
    "/meetings/{meetingId}/audio/offer",
    "/meetings/{meetingId}/startRecording",
    "/meetings/{meetingId}/stopRecording",
}


# A websocket upgrade and a Prometheus scrape: documented, but nothing to fuzz over HTTP.
NOT_FUZZED = ("/events", "/metrics")


class World:
    """A server in a background thread, and the real state the fuzzer aims at."""

    def __init__(self, tmp_path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.run(start_server(tmp_path))
        self.url = self.server.url
        self.owner, self.guest, self.room = new_id(), new_id(), new_id()
        self.owner_token = self.server.token(self.owner, {self.room: "owner"})
        self.guest_token = self.server.token(self.guest, {self.room: "member"}, guest=True)
        self.outsider_token = self.server.token(new_id())
        self.owner_sockets = [self.run(self.server.events(self.owner_token)) for _ in range(2)]
        self.guest_socket = self.run(self.server.events(self.guest_token))
        self.meeting_id = ""
        self.counter = itertools.count()
        self.seen: dict[str, set[int]] = {}  # operationId -> statuses answered

    def run(self, coro, timeout: float = 15):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, method: str, path: str, token: str, json=None, headers=None):
        return self.run(self.server.call(method, path, token, json, headers=headers))

    def reset(self) -> None:
        """A started scheduled meeting in the room, owner participating, guest waiting."""
        status, body = (
            self.call("GET", f"/meetings/{self.meeting_id}", self.owner_token) if self.meeting_id else (404, None)
        )
        if status == 404:
            expiration = (datetime.now(UTC) + timedelta(days=1)).isoformat()
            status, body = self.call(
                "POST",
                "/meetings",
                self.owner_token,
                {"name": "fuzz", "roomId": self.room, "meetingType": "scheduled", "expiration": expiration},
            )
            assert status == 200, body
            self.meeting_id = body["id"]
        mid = self.meeting_id
        status, body = self.call("POST", f"/meetings/{mid}/start", self.owner_token)
        assert status == 200, body
        if not any(p["userId"] == self.owner for p in body["participants"]):
            status, body = self.join(self.owner_token, self.owner_sockets[0].queue_id)
            assert (status, body) == (200, {"status": "ACCEPTED"}), body
        status, queue = self.call("GET", f"/meetings/{mid}/queue", self.owner_token)
        assert status == 200, queue
        if self.guest not in queue["users"]:
            self.call("POST", f"/meetings/{mid}/leave", self.guest_token)
            for _ in range(2):  # a pending acceptance is used up by the first join
                status, body = self.join(self.guest_token, self.guest_socket.queue_id)
                assert status == 200, body
                if body["status"] == "WAITING":
                    break
                self.call("POST", f"/meetings/{mid}/leave", self.guest_token)

    def join(self, token: str, queue_id: str):
        return self.call(
            "POST",
            f"/meetings/{self.meeting_id}/join",
            token,
            {"audioStreamEnabled": False, "videoStreamEnabled": False},
            headers={"queue-id": queue_id},
        )

    def aim(self, case) -> str:
        """Rotate targets: generated ids as the owner, then the real meeting (and the real
        waiting user and sockets) as the owner, as a room member, and as an outsider.
        Returns the token to call with."""
        n = next(self.counter)
        mode = n % 4
        if mode == 0:
            return self.owner_token
        token = (self.owner_token, self.guest_token, self.outsider_token)[mode - 1]
        params = case.path_parameters or {}
        if "meetingId" in params:
            params["meetingId"] = self.meeting_id
        if "userId" in params:
            params["userId"] = self.guest
        if case.headers and "queue-id" in case.headers:
            sockets = {1: self.owner_sockets[(n // 4) % 2], 2: self.guest_socket}
            if mode in sockets:
                case.headers["queue-id"] = sockets[mode].queue_id
        return token

    def stop(self) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("fuzz"))
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def api_schema(world):
    from hypothesis.internal.conjecture.utils import many

    if not hasattr(many, "more"):
        pytest.fail("hypothesis>=6.170.10 breaks hypothesis-jsonschema 0.23: install hypothesis<6.170.10")
    status, served = world.call("GET", "/openapi.json", None)
    assert status == 200, served
    for path in NOT_FUZZED:
        del served["paths"][path]
    # Credentials are the test's (a real token); the fuzzer does not invent cookies.
    return schemathesis.from_dict(
        served,
        base_url=world.url,
        generation_config=schemathesis.GenerationConfig(with_security_parameters=False),
    )


schema = schemathesis.from_pytest_fixture("api_schema")

# OpenAPI's "uuid" is no JSON Schema format: without this, generated ids are arbitrary text.
schemathesis.openapi.format("uuid", st.uuids().map(str))


def no_server_error(ctx, response, case) -> None:
    status = response.status_code
    if status == 501 and case.operation.path in MEDIA_ROUTES:
        return
    assert status < 500, f"{status} from {case.method} {case.formatted_path}: {response.text[:500]}"


def test_served_document_is_the_packaged_one(world):
    import json
    from importlib.resources import files

    status, served = world.call("GET", "/openapi.json", None)
    assert status == 200
    packaged = json.loads(files("control_api").joinpath("openapi.json").read_text())
    # Only `servers` differs: the host the document was asked by, not a hard-coded one.
    assert served["servers"] == [{"url": world.url}]
    assert {**served, "servers": packaged["servers"]} == packaged
    operations = [op for item in packaged["paths"].values() for op in item.values()]
    assert len({op["operationId"] for op in operations if op["tags"] == ["Meetings"]}) == 18
    assert all(op.get("description") for op in operations), [op["operationId"] for op in operations]
    assert {"/events", "/health", "/metrics", "/demo/token"} <= set(packaged["paths"])


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_openapi(case, world):
    world.reset()
    token = world.aim(case)
    response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=15)
    world.seen.setdefault(case.operation.definition.raw["operationId"], set()).add(response.status_code)
    case.validate_response(
        response,
        checks=(
            no_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ),
    )


def test_fuzz_reached_positive_paths(world):
    """The fuzz above is worth something only if real state was hit, not only 400/404."""
    if not world.seen:
        pytest.skip("the fuzz did not run in this session")
    # Media negotiation needs a real SDP offer; recording is not available yet (501).
    no_success_expected = {"answerRtcMediaStream", "offerRtcAudioStream", "startRecording"}
    for operation, statuses in world.seen.items():
        if operation not in no_success_expected:
            assert any(200 <= s < 300 for s in statuses), (operation, statuses)
    assert {200, 403, 404} <= world.seen["getMeeting"]
    assert {200, 403} <= world.seen["getQueue"]
    assert 200 in world.seen["joinMeeting"] and 409 in world.seen["joinMeeting"]
