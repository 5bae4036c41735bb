"""`meeting-sfu serve` with media workers: worker processes start before the node listens, and
SIGTERM ends the node and every worker within 10 s, media flowing or not."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp

from control_api.auth import TokenAuthority
from tests.helpers import SECRET, new_id
from tests.procnet import alive, child_pids
from tests.sfu.clients import Publisher, bounded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sigterm_stops_the_node_and_its_workers_within_10_s(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MEETING_SFU_SERVER_PORT": str(port),
        "MEETING_SFU_STORAGE_DATA_DIR": str(tmp_path / "data"),
        "MEETING_SFU_AUTH_JWT_SECRET": SECRET,
        "MEETING_SFU_MEDIA_WORKERS": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "control_api.cli", "serve"], env=env,
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"),
    )
    url = f"http://127.0.0.1:{port}"
    pub = Publisher()
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"{url}/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError((tmp_path / "serve.log").read_text())
            workers = child_pids(proc.pid)
            assert len(workers) == 2, "the workers are up before the node answers"
            for pid in workers:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    assert b"media_worker" in f.read()
            # A meeting with a publisher, so that shutdown has PCs to close.
            authority = TokenAuthority(SECRET, 30)
            room, alice = new_id(), new_id()
            headers = {"Authorization": f"Bearer {authority.mint(alice, rooms={room: 'owner'})}"}
            async with http.post(f"{url}/meetings", json={"name": "m", "roomId": room, "meetingType": "permanent"},
                                 headers=headers) as r:
                meeting = await r.json()
            async with http.post(f"{url}/meetings/{meeting['id']}/start", headers=headers) as r:
                assert r.status == 200
            ws = await http.ws_connect(f"{url}/events", headers=headers)
            queue = (await ws.receive_json())["queueId"]
            async with http.post(f"{url}/meetings/{meeting['id']}/join", headers={**headers, "queue-id": queue},
                                 json={"audioStreamEnabled": False, "videoStreamEnabled": False}) as r:
                assert r.status == 200
            async with http.put(f"{url}/meetings/{meeting['id']}/media", headers=headers,
                                json={"type": "video", "enabled": True, "sdp": await pub.offer()}) as r:
                assert r.status == 204
            while True:
                message = await bounded(ws.receive_json())
                if message["type"] == "MEETING_SDP_ANSWERED":
                    break
            await bounded(pub.accept(message["sdp"]))
            for _ in range(100):
                if pub.pc.connectionState == "connected":
                    break
                await asyncio.sleep(0.1)
            assert pub.pc.connectionState == "connected"

            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 15)
            assert time.monotonic() - started < 10
            assert code == 0, (tmp_path / "serve.log").read_text()[-2000:]
            assert not [pid for pid in workers if alive(pid)]
            await ws.close()
    finally:
        await pub.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
