"""Bench: 1 publisher (VP8 640x480 at 30 fps) -> N subscribers through LocalMediaService.

The server (a LocalMediaService behind JSON-lines signalling on 127.0.0.1) runs in a child
process; its CPU is read from /proc/<pid>/stat over the measuring window. This process runs the
publisher and the subscribers: `--full` of them decode (fps from decoded frames), the others
are light (they count RTP marker bits at their DTLS transport, no decoding) so that large N does
not saturate the load generator first.

    .venv/bin/python -m bench.sfu_forward --subscribers 20 --full 20
    .venv/bin/python -m bench.sfu_forward --subscribers 100 --full 2
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import sys
import time
from typing import Any

import av
import numpy as np

WIDTH, HEIGHT, FPS = 640, 480, 30


# --- server ----------------------------------------------------------------------------------


async def serve(port_file: str) -> None:
    from sfu.api import StreamRef
    from sfu.peer import IceSettings, configure_ice
    from sfu.service import LocalMediaService

    configure_ice(IceSettings(addresses=("127.0.0.1",)))
    service = LocalMediaService()
    meeting = "bench"

    async def drain_events() -> None:
        async for _ in service.events():
            pass

    events_task = asyncio.create_task(drain_events())  # noqa: F841 - runs as long as the server

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            req = json.loads(line)
            op = req["op"]
            try:
                if op == "publish":
                    out: Any = {"sdp": await service.publish(meeting, req["user"], req["kind"], req["sdp"])}
                elif op == "audio":
                    out = {"sdp": await service.audio_offer(meeting, req["user"], req["sdp"])}
                elif op == "subscribe":
                    refs = [StreamRef(u, k) for u, k in req["streams"]]
                    out = {"sdp": await service.update_subscriptions(meeting, req["user"], refs, [])}
                elif op == "answer":
                    streams = await service.answer_subscriber(meeting, req["user"], req["sdp"])
                    out = {"streams": [[s.user_id, s.kind, s.mid] for s in streams]}
                elif op == "stats":
                    stats = service.stats
                    out = {
                        "forwarded": stats.rtp_packets_out["video"],
                        "received": stats.rtp_packets_in["video"],
                        "retransmitted": stats.retransmissions,
                        # shared UDP sockets: datagrams dropped (none are expected in a bench)
                        "udp_dropped": sum(stats.udp_datagrams_dropped.values()),
                    }
                else:
                    out = {"error": f"unknown op {op}"}
            except Exception as exc:  # reported to the client, the bench server keeps going
                out = {"error": f"{exc.__class__.__name__}: {exc}"}
            writer.write((json.dumps(out) + "\n").encode())
            await writer.drain()

    profile_to = os.environ.get("SFU_BENCH_PROFILE")
    if profile_to:
        import cProfile
        import signal

        profiler = cProfile.Profile()
        profiler.enable()

        def dump() -> None:
            profiler.disable()
            profiler.dump_stats(profile_to)
            os._exit(0)

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, dump)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with open(port_file, "w") as f:
        f.write(str(port))
    async with server:
        await server.serve_forever()


# --- clients ---------------------------------------------------------------------------------


class MovingTrack:
    """640x480 moving gradient and noise with a moving bar, at 30 fps."""

    def __new__(cls) -> Any:
        from aiortc import VideoStreamTrack

        class _Track(VideoStreamTrack):
            def __init__(self) -> None:
                super().__init__()
                x = np.arange(WIDTH, dtype=np.uint16)
                y = np.arange(HEIGHT, dtype=np.uint16)[:, None]
                self.base = ((x + y) % 256).astype(np.uint8)
                # A band of fixed noise keeps the encoder near its bitrate ceiling.
                noise = np.random.default_rng(1).integers(0, 256, (HEIGHT // 4, WIDTH))
                self.base[HEIGHT // 2:HEIGHT // 2 + HEIGHT // 4] = noise.astype(np.uint8)
                self.uv = np.full((HEIGHT // 2, WIDTH), 128, dtype=np.uint8)
                self.count = 0
                self.start: float | None = None

            async def recv(self) -> av.VideoFrame:
                if self.start is None:
                    self.start = time.monotonic()
                n = self.count
                delay = self.start + n / FPS - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                luma = np.roll(self.base, n * 4, axis=1)
                luma[:40, : (n % 64) * 10] = 235
                frame = av.VideoFrame.from_ndarray(np.vstack([luma, self.uv]), format="yuv420p")
                frame.pts = n * 3000
                frame.time_base = fractions.Fraction(1, 90000)
                self.count += 1
                return frame

        return _Track()


class Signalling:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()

    async def call(self, **req: Any) -> dict[str, Any]:
        async with self.lock:
            self.writer.write((json.dumps(req) + "\n").encode())
            await self.writer.drain()
            out = json.loads(await asyncio.wait_for(self.reader.readline(), 30))
        if "error" in out:
            raise RuntimeError(out["error"])
        return out


class BenchSubscriber:
    def __init__(self, full: bool) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.full = full
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.markers = 0
        self.frames = 0
        self.task: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: Any) -> None:
        if self.full:
            self.task = asyncio.ensure_future(self._read(track))

    async def _read(self, track: Any) -> None:
        while True:
            try:
                await track.recv()
            except Exception:
                return
            self.frames += 1

    async def join(self, sig: Signalling, user: str) -> None:
        from aiortc import RTCSessionDescription

        from sfu import aiortc_hooks

        offer = await sig.call(op="subscribe", user=user, streams=[["pub", "video"]])
        await self.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        for t in self.pc.getTransceivers():
            dtls = t.receiver.transport
            if not self.full:
                aiortc_hooks.disable_reassembly(t.receiver)

                async def count(data: bytes, arrival_time_ms: int) -> None:
                    # Light: count frames (marker bits), no parsing, no RTCP feedback.
                    if data[1] & 0x80:
                        self.markers += 1

                dtls._handle_rtp_data = count
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await sig.call(op="answer", user=user, sdp=self.pc.localDescription.sdp)

    @property
    def count(self) -> int:
        return self.frames if self.full else self.markers


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from sfu.peer import IceSettings, configure_ice

    configure_ice(IceSettings(addresses=("127.0.0.1",)))
    # The publisher's VP8 encoder starts at this bitrate (REMB may move it within 0.25-1.5
    # Mbit/s); 1.2 Mbit/s is a usual 640x480 webcam stream, about 130 packets/s.
    import aiortc.codecs.vpx

    aiortc.codecs.vpx.DEFAULT_BITRATE = args.bitrate
    port_file = f"/tmp/sfu-bench-{os.getpid()}.port"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.sfu_forward", "--serve", port_file,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    subs: list[BenchSubscriber] = []
    pub = None
    try:
        for _ in range(200):
            if os.path.exists(port_file) and open(port_file).read():
                break
            await asyncio.sleep(0.05)
        port = int(open(port_file).read())
        sig = Signalling(*await asyncio.open_connection("127.0.0.1", port))

        pub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pub.addTransceiver(MovingTrack(), direction="sendonly")
        await pub.setLocalDescription(await pub.createOffer())
        answer = await sig.call(op="publish", user="pub", kind="video", sdp=pub.localDescription.sdp)
        await pub.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        audio_pc = None
        if args.audio:
            from aiortc.mediastreams import AudioStreamTrack

            audio_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            audio_pc.addTrack(AudioStreamTrack())
            await audio_pc.setLocalDescription(await audio_pc.createOffer())
            try:
                a = await sig.call(op="audio", user="pub", sdp=audio_pc.localDescription.sdp)
                await audio_pc.setRemoteDescription(RTCSessionDescription(a["sdp"], "answer"))
            except RuntimeError as exc:
                print(f"audio not sent: {exc}", file=sys.stderr)

        for i in range(args.subscribers):
            sub = BenchSubscriber(full=i < args.full)
            await sub.join(sig, f"sub{i}")
            subs.append(sub)
        await asyncio.sleep(args.warmup)

        if args.verbose:
            for s in subs:
                print(s.full, s.pc.connectionState, s.count, file=sys.stderr)
        counts0 = [s.count for s in subs]
        stats0 = await sig.call(op="stats")
        (user0, sys0), t0 = cpu_split(child.pid), time.monotonic()
        await asyncio.sleep(args.seconds)
        (user1, sys1), t1 = cpu_split(child.pid), time.monotonic()
        cpu0, cpu1 = user0 + sys0, user1 + sys1
        stats1 = await sig.call(op="stats")
        counts1 = [s.count for s in subs]

        elapsed = t1 - t0
        forwarded = stats1["forwarded"] - stats0["forwarded"]
        fps = [(b - a) / elapsed for a, b in zip(counts0, counts1, strict=False)]
        cores = (cpu1 - cpu0) / elapsed
        result = {
            "subscribers": args.subscribers,
            "full_decoders": min(args.full, args.subscribers),
            "window_s": round(elapsed, 2),
            "server_cores": round(cores, 3),
            "rtp_in_pps": round((stats1["received"] - stats0["received"]) / elapsed, 1),
            "rtp_out_pps": round(forwarded / elapsed, 1),
            "us_per_forwarded_packet": round((cpu1 - cpu0) / forwarded * 1e6, 1) if forwarded else None,
            # the same, split: user space and kernel (loopback delivery is charged to the sender)
            "us_per_forwarded_packet_user": round((user1 - user0) / forwarded * 1e6, 1) if forwarded else None,
            "us_per_forwarded_packet_sys": round((sys1 - sys0) / forwarded * 1e6, 1) if forwarded else None,
            "fps_min": round(min(fps), 2) if fps else None,
            "fps_mean": round(sum(fps) / len(fps), 2) if fps else None,
            "fps_min_decoded": round(min(fps[: args.full]), 2) if args.full else None,
            "retransmitted": stats1["retransmitted"] - stats0["retransmitted"],
            "udp_dropped": stats1["udp_dropped"] - stats0["udp_dropped"],
        }
        if audio_pc is not None:
            await audio_pc.close()
        return result
    finally:
        for sub in subs:
            if sub.task:
                sub.task.cancel()
            await sub.pc.close()
        if pub is not None:
            await pub.close()
        child.terminate()
        try:
            await asyncio.wait_for(child.wait(), 5)
        except TimeoutError:
            child.kill()
        if os.path.exists(port_file):
            os.unlink(port_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", "-n", type=int, default=20)
    parser.add_argument("--full", type=int, default=2, help="subscribers that decode (the rest count RTP)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--bitrate", type=int, default=1_200_000, help="publisher start bitrate")
    parser.add_argument("--audio", action="store_true", help="also send Opus to the audio bridge")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
