"""`meeting-sfu serve` sends and receives every peer connection's media on one UDP socket per
media worker and ICE address, worker i on `[media] udp_port` + i: counted in /proc over the
node's process tree with several meetings of several PCs."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from control_api.auth import TokenAuthority
from tests.helpers import SECRET, EventsClient, new_id
from tests.procnet import child_pids, udp_sockets

from .clients import Publisher, Subscriber, bounded, client_pc, eventually

ROOT = Path(__file__).resolve().parents[2]
ADDRESSES = ("127.0.0.1", "127.0.0.2")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_port_pair() -> int:
    """P such that UDP P and P + 1 are both free on every test address."""
    for _ in range(50):
        port = _free_port(socket.SOCK_DGRAM)
        socks = []
        try:
            for p in (port, port + 1):
                for address in ADDRESSES:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append(s)
                    s.bind((address, p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no two consecutive free UDP ports")


def _candidate_addresses(sdp: str) -> set[tuple[str, int]]:
    out = set()
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            fields = line.split()
            out.add((fields[4], int(fields[5])))
    return out


class Remote:
    """The HTTP API of a server running in another process."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http
        self.authority = TokenAuthority(SECRET)

    async def call(self, method: str, path: str, token: str, body=None, headers=None):
        h = {"Authorization": f"Bearer {token}", **(headers or {})}
        async with self.http.request(method, self.url + path, json=body, headers=h) as r:
            return r.status, (await r.json(content_type=None) if r.content_length else None)

    async def join(self, token: str, meeting_id: str) -> EventsClient:
        ws = await self.http.ws_connect(
            self.url.replace("http", "ws", 1) + "/events", headers={"Authorization": f"Bearer {token}"}
        )
        events = EventsClient(ws)
        events.queue_id = (await events.wait("websocketConnected"))["queueId"]
        status, body = await self.call(
            "POST", f"/meetings/{meeting_id}/join", token,
            {"audioStreamEnabled": False, "videoStreamEnabled": False},
            headers={"queue-id": events.queue_id},
        )
        assert status == 200, body
        return events


async def _wait_health(url: str, proc: subprocess.Popen) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            assert proc.poll() is None, "server exited"
            try:
                async with http.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("server did not start")


@pytest.mark.timeout(120)
async def test_serve_holds_one_udp_socket_per_ice_address_on_the_configured_port(tmp_path):
    http_port, udp_port = _free_port(socket.SOCK_STREAM), _free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEETING_SFU_")}
    env.update(
        MEETING_SFU_SERVER_PORT=str(http_port),
        MEETING_SFU_STORAGE_DATA_DIR=str(tmp_path / "data"),
        MEETING_SFU_AUTH_JWT_SECRET=SECRET,
        MEETING_SFU_LOGGING_LEVEL="warning",
        MEETING_SFU_MEDIA_ICE_ADDRESSES=",".join(ADDRESSES),
        MEETING_SFU_MEDIA_UDP_PORT=str(udp_port),
        MEETING_SFU_MEDIA_WORKERS="2",
    )
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "control_api.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    clients: list = []
    sdps: list[str] = []
    try:
        url = f"http://127.0.0.1:{http_port}"
        await _wait_health(url, proc)
        expected = sorted((a, p) for a in ADDRESSES for p in (udp_port, udp_port + 1))
        for _ in range(300):  # HTTP answers first; the workers bind while it does
            workers = child_pids(proc.pid)
            if len(workers) == 2 and udp_sockets(workers) == expected:
                break
            await asyncio.sleep(0.1)
        assert udp_sockets(workers) == expected, (tmp_path / "serve.log").read_text()[-2000:]
        assert udp_sockets({proc.pid}) == []  # the control plane holds no media socket
        async with aiohttp.ClientSession() as http:
            api = Remote(url, http)
            subscribers = []
            for meeting_index in range(2):  # two meetings, two participants each
                room, users = new_id(), [new_id(), new_id()]
                tokens = [api.authority.mint(u, rooms={room: "owner"}) for u in users]
                status, meeting = await api.call(
                    "POST", "/meetings", tokens[0], {"name": "m", "roomId": room, "meetingType": "permanent"}
                )
                assert status == 200, meeting
                mid = meeting["id"]
                assert (await api.call("POST", f"/meetings/{mid}/start", tokens[0]))[0] == 200
                events = [await api.join(t, mid) for t in tokens]
                for token, ev in zip(tokens, events, strict=True):
                    pub = Publisher()
                    audio = client_pc()
                    audio.addTrack(AudioStreamTrack())
                    clients += [pub, audio]
                    status, _ = await api.call(
                        "PUT", f"/meetings/{mid}/media", token,
                        {"type": "video", "enabled": True, "sdp": await pub.offer()},
                    )
                    assert status == 204
                    answer = (await ev.wait("MEETING_SDP_ANSWERED", timeout=10))["sdp"]
                    await bounded(pub.accept(answer))
                    await audio.setLocalDescription(await audio.createOffer())
                    status, _ = await api.call(
                        "PUT", f"/meetings/{mid}/audio/offer", token, {"sdp": audio.localDescription.sdp}
                    )
                    assert status == 204
                    audio_answer = (await ev.wait("MEETING_AUDIO_ANSWERED", timeout=10))["sdp"]
                    await audio.setRemoteDescription(RTCSessionDescription(audio_answer, "answer"))
                    sdps += [(meeting_index, answer), (meeting_index, audio_answer)]
                for i, (token, ev) in enumerate(zip(tokens, events, strict=True)):
                    other = users[1 - i]
                    await ev.wait("MEETING_MEDIA_STREAM_CHANGED", lambda m, o=other: m["userId"] == o, timeout=10)
                    status, _ = await api.call(
                        "PUT", f"/meetings/{mid}/media/subscribe", token,
                        {"subscribe": [{"userId": other, "type": "video"}], "unsubscribe": []},
                    )
                    assert status == 204
                    offer = (await ev.wait("MEETING_SDP_OFFERED", timeout=10))["sdp"]
                    sub = Subscriber()
                    clients.append(sub)
                    status, _ = await api.call(
                        "PUT", f"/meetings/{mid}/media/answer", token, {"sdp": await bounded(sub.answer(offer))}
                    )
                    assert status == 204
                    (stream,) = (await ev.wait("MEETING_PARTICIPANT_SUBSCRIBED", timeout=10))["streams"]
                    subscribers.append((sub, stream["mid"]))
                    sdps.append((meeting_index, offer))
            for sub, stream_mid in subscribers:
                await sub.wait_frames(stream_mid, 15, timeout=20)
            audios = [c for c in clients if not isinstance(c, (Publisher, Subscriber))]
            for pc in audios:
                await eventually(lambda pc=pc: pc.connectionState == "connected", timeout=15)
            # 12 server PCs (4 publishers, 4 subscribers, 4 audio): every candidate of a meeting
            # names its worker's port (the two meetings are on the two workers), and the node
            # still holds exactly one UDP socket per worker and ICE address.
            assert len(sdps) == 12
            ports = {}
            for meeting_index, sdp in sdps:
                (port,) = {p for _, p in _candidate_addresses(sdp)}
                assert _candidate_addresses(sdp) == {(a, port) for a in ADDRESSES}, sdp
                assert ports.setdefault(meeting_index, port) == port
            assert sorted(ports.values()) == [udp_port, udp_port + 1]
            assert child_pids(proc.pid) == workers
            assert udp_sockets(workers) == expected
            assert udp_sockets({proc.pid}) == []
    finally:
        for client in clients:
            await (client.close())
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.mark.timeout(60)
def test_serve_refuses_to_start_on_a_udp_port_in_use(tmp_path):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEETING_SFU_")}
    env.update(
        MEETING_SFU_SERVER_PORT=str(_free_port(socket.SOCK_STREAM)),
        MEETING_SFU_STORAGE_DATA_DIR=str(tmp_path / "data"),
        MEETING_SFU_MEDIA_UDP_PORT=str(port),
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "control_api.cli", "serve"], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=60,
        )
    finally:
        taken.close()
    assert proc.returncode == 2, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "cannot start" in x]
    assert "[media] udp_port" in line and f"127.0.0.1:{port}" in line
    assert "Traceback" not in proc.stderr
    assert "died" not in proc.stderr  # the other workers were shut down, not lost and restarted
