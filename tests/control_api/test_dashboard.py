"""The Grafana dashboard (bench/grafana) charts what a running server exposes, per $job."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import new_id, start_server
from tests.sfu.clients import Publisher, Subscriber, bounded

DASHBOARD = Path(__file__).resolve().parents[2] / "bench" / "grafana" / "meeting-sfu-dashboard.json"
METRIC = re.compile(r"\b((?:meeting_sfu|process)_[a-z0-9_]+)\b(\{[^}]*\})?")


def _queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def test_every_query_is_filtered_by_job_and_quantiles_sum_by_le():
    queries = _queries()
    assert queries
    for expr in queries:
        selectors = METRIC.findall(expr)
        assert selectors, expr
        for name, labels in selectors:
            assert 'job=~"$job"' in labels, (name, expr)
        if "histogram_quantile" in expr:
            assert re.search(r"histogram_quantile\([0-9.]+, sum by \(le(, \w+)*\) \(rate\(", expr), expr


def test_no_panel_mixes_units_and_events_and_overflows_are_charted():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for panel in panels:
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert not panel["fieldConfig"]["overrides"], panel["title"]  # one axis, one unit
    exprs = " ".join(_queries())
    assert "meeting_sfu_events_sent_total" in exprs and "meeting_sfu_websocket_overflows_total" in exprs
    assert "/ 1e9" not in exprs  # bytes are charted as bytes, never as GB next to cores


async def _join(server, token: str, meeting_id: str):
    events = await server.events(token)
    status, body = await server.call(
        "POST", f"/meetings/{meeting_id}/join", token,
        {"audioStreamEnabled": False, "videoStreamEnabled": False},
        headers={"queue-id": events.queue_id},
    )
    assert status == 200, body
    return events


@pytest.mark.timeout(90)
async def test_every_metric_the_dashboard_uses_is_exposed_by_a_running_server(tmp_path):
    server = await start_server(tmp_path)
    pub, sub = Publisher(), Subscriber()
    try:
        alice, bob, room = new_id(), new_id(), new_id()
        alice_token = server.token(alice, {room: "owner"})
        bob_token = server.token(bob, {room: "member"})
        status, meeting = await server.call(
            "POST", "/meetings", alice_token, {"name": "m", "roomId": room, "meetingType": "permanent"}
        )
        assert status == 200, meeting
        mid = meeting["id"]
        assert (await server.call("POST", f"/meetings/{mid}/start", alice_token))[0] == 200
        alice_events = await _join(server, alice_token, mid)
        bob_events = await _join(server, bob_token, mid)
        status, _ = await server.call(
            "PUT", f"/meetings/{mid}/media", alice_token, {"type": "video", "enabled": True, "sdp": await pub.offer()}
        )
        assert status == 204
        await bounded(pub.accept((await alice_events.wait("MEETING_SDP_ANSWERED"))["sdp"]))
        await bob_events.wait("MEETING_MEDIA_STREAM_CHANGED", lambda m: m.get("active") is True, timeout=10)
        status, _ = await server.call(
            "PUT", f"/meetings/{mid}/media/subscribe", bob_token,
            {"subscribe": [{"userId": alice, "type": "video"}], "unsubscribe": []},
        )
        assert status == 204
        offered = await bob_events.wait("MEETING_SDP_OFFERED")
        status, _ = await server.call(
            "PUT", f"/meetings/{mid}/media/answer", bob_token, {"sdp": await bounded(sub.answer(offered["sdp"]))}
        )
        assert status == 204
        (stream,) = (await bob_events.wait("MEETING_PARTICIPANT_SUBSCRIBED"))["streams"]
        await sub.wait_frames(stream["mid"], 10)

        async with server.http.get(server.url + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        exposed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
        used = {name for expr in _queries() for name, _ in METRIC.findall(expr)}
        missing = sorted(used - exposed)
        assert not missing, f"the dashboard charts metrics the server does not expose: {missing}"
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        # With media flowing, the charted series move (not only exist).
        assert samples[("meeting_sfu_meetings_active", ())] == 1
        assert samples[("meeting_sfu_websocket_sessions", ())] == 2
        assert samples[("meeting_sfu_events_sent_total", ())] > 0
        assert samples[("meeting_sfu_rtp_packets_total", (("direction", "out"), ("kind", "video")))] > 0
    finally:
        await sub.close()
        await pub.close()
        await bounded(server.stop(), 15)


async def test_a_socket_closed_for_falling_behind_is_counted(tmp_path):
    from .support import started_meeting, user

    # One event of room: two pushed in the same tick (a stop: LEFT, then STOPPED) overflow it.
    server = await start_server(tmp_path, meetings={"max_events_queue": 1})
    try:
        room = new_id()
        olga = await user(server, {room: "owner"})
        meeting = await started_meeting(olga, room)
        await olga.join(meeting["id"])
        await olga.ws.wait("MEETING_PARTICIPANT_JOINED")
        assert (await olga.call("POST", f"/meetings/{meeting['id']}/stop"))[0] == 200
        await bounded(olga.ws._reader, 5)  # the server closes the socket
        assert olga.ws.ws.close_code == 1008
        async with server.http.get(server.url + "/metrics") as r:
            text = await r.text()
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples["meeting_sfu_websocket_overflows_total"] == 1
    finally:
        await bounded(server.stop(), 15)
