"""Bench: the audio bridge's mixer CPU per participant, and mouth-to-ear latency through real PCs.

CPU: the mixer of one meeting with N participants (3 of them talking, the others sending the
Opus of a quiet room at about -75 dBov) is driven tick after tick as fast as it goes, in this
process: RTP packets (pre-encoded Opus) into each input, decode, mix, encode, RTP header,
SRTP protect and one `sendto` per participant on a real loopback UDP socket. CPU is
`time.process_time` over the ticks; "core %" is that CPU per 20 ms of audio.

Latency: a bridge and two aiortc client PCs on 127.0.0.1 (one process). The speaker's microphone
track switches from silence to a tone; the listener decodes each Opus packet of his mix as it
arrives at his DTLS transport. Mouth-to-ear = first loud packet at the listener - the moment the
speaker's track handed its first loud frame to aiortc (so the speaker's encode, both network legs,
the bridge's buffer, clock phase and encode are in; the microphone's framing and the listener's
playout buffer are not).

    .venv/bin/python -m bench.mixer                 # CPU for 2, 10 and 50 participants
    .venv/bin/python -m bench.mixer --latency 20    # plus 20 latency bursts
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import socket
import statistics
import struct
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sfu.audio import AudioSettings
from sfu.audio.codec import FRAME_SAMPLES, OpusDecoder, OpusEncoder
from sfu.audio.level import level_of
from sfu.audio.mixer import Mixer, MixOutput

RATE = 48000
PT = 111
LOOP_FRAMES = 100  # 2 s of pre-encoded input per participant, replayed


def speech_like(seed: int, frames: int) -> np.ndarray:
    """A talker: a few harmonics with a syllable-rate envelope, about -20 dBov."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames * FRAME_SAMPLES) / RATE
    f0 = 110 + 40 * seed
    sig = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * 4 * t))
    sig = sig * envelope + rng.normal(0, 0.05, t.size)
    return (sig / np.max(np.abs(sig)) * 0.3 * 32767).astype(np.int16)


def quiet_room(seed: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + seed)
    return rng.normal(0, 5, frames * FRAME_SAMPLES).astype(np.int16)  # about -76 dBov


def encode_stream(pcm: np.ndarray, ssrc: int) -> list[bytes]:
    enc = OpusEncoder()
    out = []
    for n in range(pcm.size // FRAME_SAMPLES):
        payload = enc.encode(pcm[n * FRAME_SAMPLES:(n + 1) * FRAME_SAMPLES])
        out.append(payload or b"")
    return out


def srtp_protect():
    """A real SRTP sender session (AES-CM, fixed test key) as the bridge's outputs use."""
    from pylibsrtp import Policy, Session

    policy = Policy(key=bytes(range(30)), ssrc_type=Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = True
    return Session(policy=policy).protect


def measure_cpu(participants: int, talkers: int, ticks: int) -> dict[str, float]:
    settings = AudioSettings()
    mixer = Mixer(settings, lambda user, talking: None)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    addr = sink.getsockname()
    streams: list[list[bytes]] = []
    for i in range(participants):
        member = mixer.add(f"user-{i}")
        member.input.configure(PT, None)
        mixer.set_enabled(member, True)
        member.output = MixOutput(10000 + i, PT, srtp_protect(), sock.sendto, addr)
        pcm = speech_like(i, LOOP_FRAMES) if i < talkers else quiet_room(i, LOOP_FRAMES)
        streams.append(encode_stream(pcm, 5000 + i))
    members = list(mixer.members.values())
    header = struct.Struct("!BBHII")

    def run(first: int, count: int) -> None:
        for n in range(first, first + count):
            seq = n & 0xFFFF
            for i, member in enumerate(members):
                payload = streams[i][n % LOOP_FRAMES]
                member.input.on_rtp(header.pack(0x80, PT, seq, n * 960, 5000 + i) + payload)
            mixer.tick(n)
            if n % 50 == 0:  # drain the sink now and then so that sends never fail
                try:
                    while True:
                        sink.recv(2048)
                except BlockingIOError:
                    pass

    sink.setblocking(False)
    run(1, 50)  # warm-up: encoders created, talkers detected
    encodes_before = mixer.encodes
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    run(51, ticks)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    sock.close()
    sink.close()
    audio_seconds = ticks * 0.020
    return {
        "participants": participants,
        "talking": talkers,
        "ticks": ticks,
        "encodes_per_tick": (mixer.encodes - encodes_before) / ticks,
        "cpu_ms_per_tick": cpu / ticks * 1000,
        "core_percent": cpu / audio_seconds * 100,
        "core_percent_per_participant": cpu / audio_seconds * 100 / participants,
        "us_per_participant_per_tick": cpu / ticks / participants * 1e6,
        "wall_ms_per_tick": wall / ticks * 1000,
    }


# --- latency through real PCs -----------------------------------------------------------------


async def measure_latency(bursts: int) -> dict[str, float]:
    import av
    from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from sfu import aiortc_hooks
    from sfu.audio import AudioBridge
    from sfu.peer import IceSettings, configure_ice

    configure_ice(IceSettings(addresses=("127.0.0.1",)))

    class Microphone(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.n = 0
            self.start: float | None = None
            self.loud = False
            self.first_loud_at: float | None = None

        async def recv(self) -> av.AudioFrame:
            if self.start is None:
                self.start = time.monotonic()
            delay = self.start + self.n * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = (np.arange(FRAME_SAMPLES) + self.n * FRAME_SAMPLES) / RATE
            amp = 0.3 * 32767 if self.loud else 0.0
            pcm = (amp * np.sin(2 * np.pi * 600 * t)).astype(np.int16)
            if self.loud and self.first_loud_at is None:
                self.first_loud_at = time.monotonic()
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = self.n * FRAME_SAMPLES
            frame.time_base = fractions.Fraction(1, RATE)
            self.n += 1
            return frame

    bridge = AudioBridge("bench", lambda user, talking: None, AudioSettings())
    mic = Microphone()
    heard: list[float] = []
    decoder = OpusDecoder()

    def on_rtp(data: bytes) -> None:
        start = 12 + (data[0] & 0x0F) * 4
        if data[0] & 0x10:
            start += 4 + int.from_bytes(data[start + 2:start + 4], "big") * 4
        pcm = decoder.decode(data[start:])
        if pcm is not None and level_of(pcm) < 30:
            heard.append(time.monotonic())

    pcs = []
    for user, track in (("speaker", mic), ("listener", Microphone())):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(track)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await bridge.offer(user, pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        bridge.set_enabled(user, True)
        pcs.append(pc)
    listener_dtls = pcs[1].getTransceivers()[0].receiver.transport
    aiortc_hooks.hook_rtp_ingress(listener_dtls, on_rtp)
    await asyncio.sleep(2.0)
    results = []
    for _ in range(bursts):
        heard.clear()
        mic.first_loud_at = None
        mic.loud = True
        await asyncio.sleep(0.3)
        mic.loud = False
        if heard and mic.first_loud_at is not None:
            results.append((heard[0] - mic.first_loud_at) * 1000)
        await asyncio.sleep(0.4 + 0.02 * np.random.random())
    stats = bridge.stats()
    for pc in pcs:
        await pc.close()
    await bridge.close()
    results.sort()
    return {
        "bridge_skipped_ticks": stats["skipped_ticks"],
        "bridge_late_max_ms": stats["late_max_seconds"] * 1000,
        "bridge_dropped_in": stats["dropped_in"],
        "bursts": len(results),
        "mouth_to_ear_ms_median": statistics.median(results) if results else float("nan"),
        "mouth_to_ear_ms_p90": results[int(0.9 * (len(results) - 1))] if results else float("nan"),
        "mouth_to_ear_ms_min": results[0] if results else float("nan"),
        "mouth_to_ear_ms_max": results[-1] if results else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, nargs="*", default=[2, 10, 50])
    parser.add_argument("--talking", type=int, default=3)
    parser.add_argument("--ticks", type=int, default=500, help="20 ms ticks measured per size")
    parser.add_argument("--latency", type=int, default=0, help="tone bursts for the latency test")
    args = parser.parse_args()
    rows = [measure_cpu(n, min(args.talking, n), args.ticks) for n in args.participants]
    print(f"{'participants':>12} {'talking':>7} {'encodes/tick':>12} {'ms/tick':>8} "
          f"{'core %':>7} {'core %/participant':>18} {'us/participant/tick':>19}")
    for r in rows:
        print(f"{r['participants']:>12} {r['talking']:>7} {r['encodes_per_tick']:>12.1f} "
              f"{r['cpu_ms_per_tick']:>8.3f} {r['core_percent']:>7.2f} "
              f"{r['core_percent_per_participant']:>18.3f} "
              f"{r['us_per_participant_per_tick']:>19.1f}")
    out: dict[str, object] = {"cpu": rows}
    if args.latency:
        latency = asyncio.run(measure_latency(args.latency))
        print("latency: " + ", ".join(f"{k}={v:.1f}" for k, v in latency.items()))
        out["latency"] = latency
    print(json.dumps(out))


if __name__ == "__main__":
    main()
