"""Micro-bench: CPU per forwarded copy of Producer.on_rtp, compiled fast path against pure Python.

One Producer, N consumers with their own SRTP sessions (AEAD_AES_256_GCM, what two aiortc
peers negotiate, or another profile with --profile), each sending to its own UDP socket on
127.0.0.1 through one shared asyncio datagram transport (as a worker's shared socket). Only the
`on_rtp` calls are timed, with the thread's CPU clock (user + system, the kernel's loopback
delivery included), so the figure is less sensitive to other load on the machine than a
whole-server bench; the receivers are drained outside the timed part. Both paths run in the
same process, alternating in rounds.

    .venv/bin/python -m bench.fastpath_micro --consumers 20 --packets 3000
    .venv/bin/python -m bench.fastpath_micro --profile all   # each SRTP profile, one after the other
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import time
from typing import Any

# --profile name -> (pylibsrtp's profile constant, master key + salt bytes)
PROFILES = {
    "aead_aes_256_gcm": ("SRTP_PROFILE_AEAD_AES_256_GCM", 32 + 12),
    "aead_aes_128_gcm": ("SRTP_PROFILE_AEAD_AES_128_GCM", 16 + 12),
    "aes128_cm_sha1_80": ("SRTP_PROFILE_AES128_CM_SHA1_80", 16 + 14),
}


def _packet(seq: int, ts: int, keyframe: bool, size: int) -> bytes:
    descriptor = b"\x90\xe0\x80\x01\x01\x20" + (b"\x10\x02\x00\x9d\x01\x2a\x80\x02\xe0\x01" if keyframe else b"\x11")
    payload = descriptor + bytes(size - len(descriptor))
    return struct.pack("!BBHII", 0x80, 0x80 | 96, seq & 0xFFFF, ts & 0xFFFFFFFF, 4242) + payload


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import pylibsrtp

    from sfu import fastpath
    from sfu.aiortc_hooks import SendPath
    from sfu.consumer import Consumer, SendParameters, StreamState
    from sfu.metrics import MediaStats
    from sfu.producer import CodecChoice, Producer
    from sfu.rtp import extension_block

    loop = asyncio.get_running_loop()
    tx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx_sock.bind(("127.0.0.1", 0))
    tx_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=tx_sock)
    fd = fastpath.socket_fd(tx_sock.fileno())
    producer = Producer("m", "pub", "video", CodecChoice("video/VP8", 90000, 96, None, ()), [],
                        on_active=lambda p: None, on_peer_lost=lambda p: None, stats=MediaStats())
    receivers = []
    constant, key_bytes = PROFILES[args.profile]
    profile = getattr(pylibsrtp.Policy, constant)
    before, after = extension_block(1, "0", 3)
    for i in range(args.consumers):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        receivers.append(rx)
        policy = pylibsrtp.Policy(key=bytes([i]) * key_bytes, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                  srtp_profile=profile)
        policy.allow_repeat_tx = True
        session = pylibsrtp.Session(policy)
        consumer = Consumer(producer, f"sub{i}", StreamState())
        consumer.bind(SendParameters(pt=96, rtx_pt=None, ssrc=1000 + i, rtx_ssrc=0, ext_before=before,
                                     ext_after=after, has_abs=True,
                                     path=SendPath(session.protect, transport.sendto, rx.getsockname(), session, fd)))
        consumer.resume()
        producer.add_consumer(consumer)

    def drain() -> int:
        n = 0
        for rx in receivers:
            while True:
                try:
                    rx.recv(2048)
                except BlockingIOError:
                    break
                n += 1
        return n

    seq, ts = 1, 0
    producer.on_rtp(_packet(seq, ts, True, args.size))  # every consumer starts on this keyframe
    drain()
    cpu = {"fast": 0.0, "python": 0.0}
    copies = {"fast": 0, "python": 0}
    received = {"fast": 0, "python": 0}
    paths = ("fast", "python") if fastpath.available else ("python",)
    for _ in range(args.rounds):
        for path in paths:
            fastpath.enabled = path == "fast"
            out0 = producer.stats.rtp_packets_out["video"]
            for i in range(args.packets // args.rounds):
                seq += 1
                if i % 4 == 0:
                    ts += 3000
                data = _packet(seq, ts, False, args.size)
                t0 = time.thread_time()
                producer.on_rtp(data)
                cpu[path] += time.thread_time() - t0
                if i % 8 == 7:
                    received[path] += drain()
            copies[path] += producer.stats.rtp_packets_out["video"] - out0
            received[path] += drain()
    fastpath.enabled = fastpath.available
    transport.close()
    for rx in receivers:
        rx.close()
    result: dict[str, Any] = {"consumers": args.consumers, "packet_bytes": len(data), "path_built": fastpath.available,
                              "profile": args.profile}
    for path in paths:
        result[f"{path}_us_per_copy"] = round(cpu[path] / copies[path] * 1e6, 2) if copies[path] else None
        result[f"{path}_copies"] = copies[path]
        result[f"{path}_received"] = received[path]
    if len(paths) == 2 and result["python_us_per_copy"]:
        result["ratio_fast_over_python"] = round(result["fast_us_per_copy"] / result["python_us_per_copy"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--consumers", "-n", type=int, default=20)
    parser.add_argument("--packets", type=int, default=3000, help="incoming packets per path")
    parser.add_argument("--rounds", type=int, default=6, help="alternations between the two paths")
    parser.add_argument("--size", type=int, default=1150, help="RTP payload bytes")
    parser.add_argument("--profile", choices=[*PROFILES, "all"], default="aead_aes_256_gcm",
                        help="SRTP protection profile of the consumers (all: one run each)")
    args = parser.parse_args()
    if args.profile != "all":
        print(json.dumps(asyncio.run(run(args)), indent=2))
        return
    results = []
    for name in PROFILES:
        args.profile = name
        results.append(asyncio.run(run(args)))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
