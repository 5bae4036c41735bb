"""Micro-bench: CPU per received publisher packet, the lean receive path against aiortc's.

A LocalMediaService in this process answers one aiortc publisher whose track never sends (so
that no encoder runs here); the bench then writes its own VP8 packets (with abs-send-time, as a
browser sends them), protects them with the publisher's own SRTP session and hands each
datagram to the server's shared socket demultiplexer as the socket would. Timed, with the
thread's CPU clock: from the datagram to the producer, through the lean path
(aiortc_hooks.LeanIngress) or aiortc's own (aioice queue, DTLS task, RtpPacket, receiver), the
event loop turns that aiortc's path needs included; both alternate in rounds in one run. There
are no subscribers: what is measured is the receive side alone.

    .venv/bin/python -m bench.receive_micro --packets 3000 --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time
from typing import Any


class _SilentTrack:
    """A video track that never yields a frame (the publisher's sender stays idle)."""

    def __new__(cls) -> Any:
        from sfu.aiortc_hooks import IdleTrack

        return IdleTrack()


def _vp8(seq: int, ts: int, ssrc: int, pt: int, abs_id: int, marker: bool, size: int) -> bytes:
    abs3 = (int(time.time() * 262144) & 0xFFFFFF).to_bytes(3, "big")
    ext = b"\xbe\xde\x00\x01" + bytes(((abs_id << 4) | 2,)) + abs3
    payload = b"\x90\xe0\x80\x01\x01\x20\x11" + bytes(size - 7)
    head = struct.pack("!BBHII", 0x90, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    return head + ext + payload


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from sfu import fastpath, peer
    from sfu.peer import IceSettings, configure_ice
    from sfu.service import LocalMediaService

    configure_ice(IceSettings(addresses=("127.0.0.1",)))
    fastpath.lean_receive = True
    service = LocalMediaService()
    await service.start()
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver(_SilentTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    answer = await service.publish("bench", "pub", "video", pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    for _ in range(200):
        if pc.connectionState == "connected":
            break
        await asyncio.sleep(0.05)
    producer = service.router("bench").producers[("pub", "video")]
    ingress = producer.ingress
    assert ingress is not None, "the lean path is not installed"
    (mux,) = peer.ice_sockets().muxes()
    endpoint, addr = next((e, a) for a, e in mux._by_addr.items() if e.deliver is ingress)
    tx = transceiver.sender.transport._tx_srtp
    ssrc = transceiver.sender._ssrc
    abs_id = next(
        int(line.split()[0][9:]) for line in answer.splitlines()
        if line.startswith("a=extmap:") and line.endswith("/abs-send-time")
    )
    queue_empty = ingress.queue_empty
    deliver = mux.datagram_received
    seq, ts = 1000, 0
    cpu = {"lean": 0.0, "aiortc": 0.0}
    packets = {"lean": 0, "aiortc": 0}
    start_packets = producer.packets

    async def send(count: int, path: str | None) -> None:
        nonlocal seq, ts
        endpoint.deliver = ingress if path != "aiortc" else ingress.fallback
        t0 = time.thread_time()
        for i in range(count):
            marker = i % 5 == 4
            data = tx.protect(_vp8(seq, ts, ssrc, producer.pt, abs_id, marker, args.size))
            seq += 1
            if marker:
                ts += 3000
            deliver(data, addr)
            if i % 8 == 7:  # as the loop turns between socket reads
                await asyncio.sleep(0)
                while not queue_empty():
                    await asyncio.sleep(0)
        while not queue_empty():
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        if path is not None:
            cpu[path] += time.thread_time() - t0
            packets[path] += count
        endpoint.deliver = ingress

    await send(200, None)  # warm-up: aiortc's router learns the SSRC
    protect_cost = 0.0
    t0 = time.thread_time()
    for i in range(args.packets):
        _vp8(i, i, ssrc, producer.pt, abs_id, False, args.size)
    build = time.thread_time() - t0
    probe = tx.protect(_vp8(1, 1, 4242, producer.pt, abs_id, False, args.size))
    t0 = time.thread_time()
    for _ in range(args.packets):
        tx.protect(probe)  # another SSRC's sequence: only the cost matters
    protect_cost = (time.thread_time() - t0 + build) / args.packets
    for _ in range(args.rounds):
        for path in ("lean", "aiortc"):
            await send(args.packets, path)
    received = producer.packets - start_packets
    await pc.close()
    await service.close()
    result: dict[str, Any] = {
        "packets_per_path": packets["lean"],
        "payload_bytes": args.size,
        "received_by_producer": received,
        "lean_fallbacks": ingress.fallbacks,
        "unprotect": "compiled" if fastpath.unprotect is not None else "pylibsrtp",
    }
    for path in cpu:
        result[f"{path}_us_per_packet"] = round((cpu[path] / packets[path] - protect_cost) * 1e6, 2)
    result["ratio_lean_over_aiortc"] = round(result["lean_us_per_packet"] / result["aiortc_us_per_packet"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=3000, help="packets per round and path")
    parser.add_argument("--rounds", type=int, default=6, help="alternations between the two paths")
    parser.add_argument("--size", type=int, default=1100, help="RTP payload bytes")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
