"""Media workers (DESIGN §9.1): meetings spread over worker processes, a dead worker costs only
its own meetings (LEFT, STOPPED, recording recovered) and comes back, /metrics per worker."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import av
import pytest

from control_api.keys import MEDIA
from control_api.workers import ASKED_SECONDS
from tests.helpers import new_id, start_server
from tests.sfu.clients import Publisher, Subscriber, assert_counters_match, bounded


@pytest.fixture
async def server(tmp_path):
    handle = await start_server(tmp_path, media={"workers": 2})
    try:
        yield handle
    finally:
        await bounded(handle.stop(), 20)


class Meeting:
    """One meeting through the API: an owner publishing video, a member watching it."""

    def __init__(self, server) -> None:
        self.server = server
        self.room, self.owner, self.member = new_id(), new_id(), new_id()
        self.owner_token = server.token(self.owner, {self.room: "owner"})
        self.member_token = server.token(self.member, {self.room: "member"})
        self.pub = Publisher()
        self.sub = Subscriber()
        self.id = ""
        self.mid = ""

    async def call(self, token: str, method: str, tail: str, body=None):
        return await self.server.call(method, f"/meetings/{self.id}{tail}", token, body)

    async def join(self, token: str):
        events = await self.server.events(token)
        status, body = await self.server.call(
            "POST", f"/meetings/{self.id}/join", token,
            {"audioStreamEnabled": False, "videoStreamEnabled": False},
            headers={"queue-id": events.queue_id},
        )
        assert (status, body) == (200, {"status": "ACCEPTED"}), body
        return events

    async def start(self, again_of: Meeting | None = None) -> None:
        """Create, start, join, publish and watch; `again_of`: start that meeting again instead."""
        if again_of is None:
            status, meeting = await self.server.call(
                "POST", "/meetings", self.owner_token, {"name": "m", "roomId": self.room, "meetingType": "permanent"}
            )
            assert status == 200, meeting
            self.id = meeting["id"]
        else:
            self.room, self.id = again_of.room, again_of.id
            self.owner, self.owner_token = again_of.owner, again_of.owner_token
            self.member, self.member_token = again_of.member, again_of.member_token
        assert (await self.call(self.owner_token, "POST", "/start"))[0] == 200
        self.owner_events = await self.join(self.owner_token)
        self.member_events = await self.join(self.member_token)
        status, body = await self.call(
            self.owner_token, "PUT", "/media", {"type": "video", "enabled": True, "sdp": await self.pub.offer()}
        )
        assert status == 204, body
        answered = await self.owner_events.wait("MEETING_SDP_ANSWERED")
        await bounded(self.pub.accept(answered["sdp"]))
        status, body = await self.call(
            self.member_token, "PUT", "/media/subscribe",
            {"subscribe": [{"userId": self.owner, "type": "video"}], "unsubscribe": []},
        )
        assert status == 204, body
        offered = await self.member_events.wait("MEETING_SDP_OFFERED")
        answer = await bounded(self.sub.answer(offered["sdp"]))
        assert (await self.call(self.member_token, "PUT", "/media/answer", {"sdp": answer}))[0] == 204
        subscribed = await self.member_events.wait("MEETING_PARTICIPANT_SUBSCRIBED")
        self.mid = subscribed["streams"][0]["mid"]
        await self.sub.wait_frames(self.mid, 10)

    async def close(self) -> None:
        await self.sub.close()
        await self.pub.close()


async def test_a_burst_of_meetings_spreads_over_workers_between_two_snapshots(server):
    """Placement reads each worker's peer connections from its last stats snapshot (every
    second): meetings that all start publishing within one must not all land on the worker that
    reported fewest. Defect found by the capacity bench: 24 meetings started back to back went
    17 to one worker and 5 to the other."""
    pool = server.app[MEDIA]
    busy = Meeting(server)
    burst = [Meeting(server) for _ in range(4)]
    try:
        await busy.start()  # 2 peer connections on one worker, forwarding
        await asyncio.sleep(ASKED_SECONDS + 0.5)  # its snapshots report them: no longer counted as asked
        assert pool.workers[pool.worker_of(busy.id)].load()[0] == 2
        for m in burst:
            status, meeting = await server.call(
                "POST", "/meetings", m.owner_token, {"name": "m", "roomId": m.room, "meetingType": "permanent"}
            )
            m.id = meeting["id"]
            assert (await m.call(m.owner_token, "POST", "/start"))[0] == 200
            m.owner_events = await m.join(m.owner_token)
        offers = [await m.pub.offer() for m in burst]
        answers = await asyncio.gather(*(
            m.call(m.owner_token, "PUT", "/media", {"type": "video", "enabled": True, "sdp": offer})
            for m, offer in zip(burst, offers, strict=True)
        ))
        assert [status for status, _ in answers] == [204] * 4, answers
        placed = [pool.worker_of(m.id) for m in [busy, *burst]]
        assert abs(placed.count(0) - placed.count(1)) <= 1, (placed, [w.load() for w in pool.workers])
    finally:
        for m in [busy, *burst]:
            await m.close()


async def test_meetings_spread_over_workers_and_a_killed_worker_costs_only_its_own(server, tmp_path):
    pool = server.app[MEDIA]
    first, second = Meeting(server), Meeting(server)
    try:
        await first.start()
        await second.start()
        workers = {pool.worker_of(first.id), pool.worker_of(second.id)}
        assert workers == {0, 1}, "least-loaded placement puts the second meeting on the idle worker"
        # The first meeting records; its worker is then killed.
        assert (await first.call(first.owner_token, "POST", "/startRecording"))[0] == 204
        await asyncio.sleep(1.5)
        victim = pool.workers[pool.worker_of(first.id)]
        victim_pid = victim.pid
        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)

        # Its meeting stops as by a stop: LEFT for each participant, then STOPPED, within 10 s.
        stopped = await first.member_events.wait("MEETING_STOPPED", timeout=10)
        assert time.monotonic() - killed_at < 10
        left = [m["userId"] for m in first.member_events.messages if m["type"] == "MEETING_PARTICIPANT_LEFT"]
        assert set(left) == {first.owner, first.member}
        order = [m["type"] for m in first.member_events.messages]
        assert order.index("MEETING_STOPPED") > max(i for i, t in enumerate(order) if t == "MEETING_PARTICIPANT_LEFT")
        assert stopped["meetingId"] == first.id
        status, body = await server.call("GET", f"/meetings/{first.id}", first.owner_token)
        assert status == 200 and body["active"] is False

        # The recording was recovered from its parts into the fallback path, and decodes.
        files = list((tmp_path / "data" / "recordings" / f"meeting_{first.id}").glob("*.mkv"))
        assert len(files) == 1, files
        with av.open(str(files[0])) as container:
            assert any(s.type == "video" for s in container.streams)
            assert sum(1 for _ in container.demux(video=0)) > 10

        # The other worker's meeting kept its media all along.
        before = second.pub.track.count
        received = await second.sub.wait_frames(second.mid, 20, at_least=before)
        assert_counters_match(received, second.pub.track.count)
        assert not [m for m in second.member_events.messages if m["type"] == "MEETING_STOPPED"]

        # The worker is back (a new process), the restart is counted, and the meeting can be
        # started again at once, with media.
        async def restarted() -> None:
            while not (victim.ready and victim.pid != victim_pid):
                await asyncio.sleep(0.1)

        await bounded(restarted(), 20)
        metrics = await server.http.get(f"{server.url}/metrics")
        text = await metrics.text()
        assert "meeting_sfu_worker_restarts_total 1.0" in text
        assert 'meeting_sfu_peer_connections{state="connected",worker="' in text
        again = Meeting(server)
        try:
            await again.start(again_of=first)  # the same meeting, with media again
        finally:
            await again.close()
    finally:
        await first.close()
        await second.close()


async def test_metrics_sum_workers_and_label_their_gauges(server):
    meeting = Meeting(server)
    try:
        await meeting.start()
        text = await (await server.http.get(f"{server.url}/metrics")).text()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        assert samples["meeting_sfu_workers"] == 2
        pcs = {k: v for k, v in samples.items() if k.startswith('meeting_sfu_peer_connections{state="connected"')}
        assert sorted(pcs) == [
            'meeting_sfu_peer_connections{state="connected",worker="0"}',
            'meeting_sfu_peer_connections{state="connected",worker="1"}',
        ]
        assert sum(pcs.values()) == 2  # the publisher's and the subscriber's, on one worker
        assert sorted(v for k, v in samples.items() if k.startswith("meeting_sfu_worker_meetings")) == [0, 1]
        out = samples['meeting_sfu_rtp_packets_total{direction="out",kind="video"}']
        assert out >= 10
    finally:
        await meeting.close()


async def test_a_hung_worker_is_killed_and_restarted(tmp_path):
    """A worker that stops answering (SIGSTOP here; a stuck loop in life) is killed after
    `hung_after` seconds of silence, its meetings stop, and it comes back."""
    from control_api.workers import WorkerPool
    from sfu.settings import MediaPlaneSettings

    pool = WorkerPool(MediaPlaneSettings(), 1, hung_after=2.0)
    server = await start_server(tmp_path, media_service=pool)
    meeting = Meeting(server)
    try:
        await meeting.start()
        worker = pool.workers[0]
        pid = worker.pid
        os.kill(pid, signal.SIGSTOP)
        await meeting.member_events.wait("MEETING_STOPPED", timeout=15)

        async def restarted() -> None:
            while not (worker.ready and worker.pid != pid):
                await asyncio.sleep(0.1)

        await bounded(restarted(), 20)
        assert pool.restarts == 1
    finally:
        await meeting.close()
        await bounded(server.stop(), 20)
