"""What keeps the load generator light, on its own: the replayed VP8 clip (decodable, a keyframe
on request) and the batch reader of light subscribers (it counts as the per-datagram path does,
drops RTCP, hands STUN on)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import av

from bench.batch_receive import BatchReceiver
from bench.clients import StreamCounter
from bench.clip import EncodedClip, ReplayTrack


def test_clip_starts_on_a_keyframe_and_decodes_looped_and_after_a_jump():
    clip = EncodedClip(160, 120, 30, 300_000, seconds=0.5)
    assert clip.keyframes == [0] and len(clip.frames) == 15
    decoder = av.CodecContext.create("vp8", "r")
    # Twice round the loop, then a jump back to the keyframe from the middle.
    order = list(range(15)) * 2 + list(range(7)) + list(range(15))
    frames = [f for i in order for f in decoder.decode(av.Packet(clip.frames[i]))]
    assert len(frames) == len(order)
    assert 100_000 < clip.bitrate < 600_000  # the encoder spends about what it was given


def test_replay_track_answers_a_keyframe_request_with_the_clip_keyframe():
    clip = EncodedClip(160, 120, 30, 300_000, seconds=0.5)

    async def run() -> list[tuple[bytes, int]]:
        track = ReplayTrack(clip)
        sent = []
        for n in range(8):
            if n == 5:
                track.request_keyframe()
            packet = await track.recv()
            sent.append((bytes(packet), packet.pts))
        return sent

    sent = asyncio.run(run())
    assert [data for data, _ in sent] == [clip.frames[i] for i in (0, 1, 2, 3, 4, 0, 1, 2)]
    assert [pts for _, pts in sent] == [n * 3000 for n in range(8)]  # fresh 90 kHz time stamps


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.got: list[tuple[bytes, tuple[str, int]]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.got.append((data, addr))


def _rtp(seq: int, ssrc: int, marker: bool) -> bytes:
    return struct.pack("!BBHII", 0x80, 96 | (0x80 if marker else 0), seq, 0, ssrc) + bytes(200)


def test_batch_reader_counts_like_the_datagram_path_drops_rtcp_and_hands_stun_on():
    # In order across the wrap, a lost packet, a repeated one, a late one, a second stream on the
    # same socket, then a burst larger than one recvmmsg call.
    a = [65530, 65531, 65532, 65533, 65535, 0, 1, 1, 2, 65534, 3] + [(4 + i) & 0xFFFF for i in range(300)]
    b = [10, 11, 13]

    async def run():
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(_Protocol, local_addr=("127.0.0.1", 0))
        counters = {1: StreamCounter(), 2: StreamCounter()}
        reference = {1: StreamCounter(), 2: StreamCounter()}
        for ssrc, seq in ((1, 65529), (2, 9)):  # ready: a frame of each stream seen
            for c in (counters[ssrc], reference[ssrc]):
                c.add(seq, 212, True, time.time())
        reader = BatchReceiver(3600, capacity=128)  # drained by hand below
        reader.add(transport, protocol, counters)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dest = transport.get_extra_info("sockname")
        stun = b"\x00\x01\x00\x00" + bytes(16)
        rtcp = bytes([0x80, 200]) + bytes(26)
        sent = [(1, s) for s in a[:11]] + [(2, s) for s in b] + [(1, s) for s in a[11:]]
        for i, (ssrc, seq) in enumerate(sent):
            tx.sendto(_rtp(seq, ssrc, i % 3 == 0), dest)
            reference[ssrc].add(seq, 212, i % 3 == 0, time.time())
            if i == 5:
                tx.sendto(stun, dest)
                tx.sendto(rtcp, dest)
        await asyncio.sleep(0.2)
        assert protocol.got == []  # paused: nothing went through the event loop
        reader.drain()
        reader.stop()
        transport.close()
        tx.close()
        return counters, reference, protocol.got, reader

    counters, reference, got, reader = asyncio.run(run())
    for ssrc in (1, 2):
        assert counters[ssrc].snapshot() == reference[ssrc].snapshot(), ssrc
        assert counters[ssrc].max_ext == reference[ssrc].max_ext
    assert [data for data, _ in got] == [b"\x00\x01\x00\x00" + bytes(16)]
    assert got[0][1][0] == "127.0.0.1" and got[0][1][1] > 0
    assert reader.rtcp_dropped == 1
    assert reader.slow_groups >= 1  # the repeated and late packets went packet by packet


def test_a_light_run_end_to_end(tmp_path):
    """Replaying publishers and batch-read light subscribers through the real server: every
    subscriber gets the stream, the decoding one decodes it, and each process's share shows."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "light.json"
    cmd = [
        sys.executable, "-m", "bench.load", "--meetings", "1", "--subscribers", "4", "--decoders", "1",
        "--replay", "--batch-ms", "20", "--reading", "1", "--processes", "2", "--width", "320",
        "--height", "240", "--bitrate", "400000", "--duration", "2", "--warmup", "1", "--quiet",
        "--json", str(out),
    ]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120, check=False)
    assert out.exists(), proc.stderr[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert "failed" not in run, run
    # 1 decoding, 1 light reading every packet, 2 light counted by the kernel (--reading 1)
    assert run["subscribers_ready"] == 4 and run["subscriber_streams"] == 2
    assert run["fps_min"] > 20 and run["decoded_fps_min"] > 20, run
    assert run["kernel_counted_subscribers"] == 2 and run["kernel_counted_loss_percent"] < 5, run
    # the forwarded packets are the four subscribers' (each gets the publisher's stream)
    assert run["forwarded_pps"] > 3.5 * run["forwarded_pps"] / 4 > 0
    assert run["client_cpu_us_per_packet"] is not None
    assert [(p["publishers"], p["decoding"], p["light"]) for p in run["client_processes_cpu"]] == [(1, 1, 0), (0, 0, 3)]


def test_a_kernel_counted_socket_never_reads_rtp_and_the_kernel_counts_it():
    """The socket filter drops RTP on arrival and the kernel counts it; STUN, DTLS and RTCP
    still reach the batch reader."""
    async def run():
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(_Protocol, local_addr=("127.0.0.1", 0))
        counters = {1: StreamCounter()}
        reader = BatchReceiver(3600, capacity=128)
        reader.add(transport, protocol, counters, in_kernel=True)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dest = transport.get_extra_info("sockname")
        before = reader.kernel_datagrams([protocol])
        reader.drain()
        start = reader.kernel_datagrams([protocol])
        for seq in range(40):  # RTP, marker bits and high payload types included
            tx.sendto(struct.pack("!BBHII", 0x80, (0x80 if seq % 3 else 0) | (96 + seq % 32), seq, 0, 1), dest)
        tx.sendto(b"\x00\x01\x00\x00" + bytes(16), dest)  # STUN
        tx.sendto(bytes([0x80, 200]) + bytes(26), dest)  # RTCP sender report
        tx.sendto(bytes([0x81, 205]) + bytes(14), dest)  # RTCP feedback
        tx.sendto(bytes([22, 0xFE, 0xFD]) + bytes(10), dest)  # DTLS
        await asyncio.sleep(0.2)
        reader.drain()
        end = reader.kernel_datagrams([protocol])
        other = reader.kernel_datagrams([object()])
        reader.stop()
        transport.close()
        tx.close()
        return before, start, end, other, protocol.got, reader, counters

    before, start, end, other, got, reader, counters = asyncio.run(run())
    assert before == start == 0 and end == 40  # every RTP datagram, and nothing else
    assert other is None  # a protocol that is not counted in the kernel
    assert counters[1].packets == 0  # never read
    assert reader.rtcp_dropped == 2
    assert [data[0] for data, _ in got] == [0, 22]  # STUN and DTLS go to the ICE connection


def test_kernel_counted_loss_is_the_deficit_against_the_readers_of_the_meeting():
    from bench.aggregate import aggregate
    from bench.protocol import Result

    def sub(meeting, kernel=None, packets=0, decode=False):
        spec = {"user_id": "u", "role": "subscriber", "decode": decode, "meeting_id": meeting,
                "publishers": ["p"], "kernel_count": kernel is not None}
        def snap(at, k, n):
            return {"at": at, "streams": {} if kernel is not None else {7: {"packets": n, "bytes": n * 1000,
                    "frames": n // 2, "expected": n}}, "kernel_datagrams": k, "decoded": 0, "audio_packets": 0}
        return {"spec": spec, "start": snap(0.0, 0 if kernel is not None else None, 0),
                "end": snap(10.0, kernel, packets), "errors": [], "e2e_ms": [], "arrivals": [], "sent": [],
                "first_frame_s": None}

    results = [
        Result(1, [sub("a", packets=600), sub("a", kernel=600), sub("a", kernel=300)]),
        Result(2, [sub("a", packets=600), sub("a", kernel=630)]),  # RTX on top: no deficit, no gain
        Result(3, [sub("b", kernel=0)]),  # no reader in its process: the meeting's readers count
        Result(4, [sub("b", packets=600)]),
    ]
    out = aggregate(results, 10.0)
    assert out["kernel_counted_subscribers"] == 4
    # lacking: 30 packets/s of the half-fed one, 60 of the starved one, out of 4 x 60 expected
    assert out["kernel_counted_loss_percent"] == 37.5
    assert out["subscriber_streams"] == 3 and out["fps_min"] == 30.0
    assert out["forwarded_pps"] == 3 * 60 + (60 + 30 + 63 + 0)
    assert out["forwarded_bps"] == 3 * 480_000 + (60 + 30 + 63) * 8000


def test_batched_counting_matches_the_packet_by_packet_counter():
    """Streams of several sockets interleaved in one batch, batch after batch: in order across
    the wrap, losses, repeats, late packets, a stream's first packets, RTP of no stream."""
    import numpy as np

    from bench.batch_receive import StreamTable, count_rtp

    rng = np.random.default_rng(7)
    table = StreamTable()
    reference = {}
    for sock in range(3):
        for ssrc in (11, 12):
            counter, ref = StreamCounter(), StreamCounter()
            if (sock, ssrc) != (2, 12):  # that one's first packets come in a batch
                for c in (counter, ref):
                    c.add(65500, 100, True, 1.0)
            table.add(sock, ssrc, counter)
            reference[(sock << 32) | ssrc] = ref
    next_seq = dict.fromkeys(reference, 65501)
    slow_total = 0
    for _ in range(40):
        packets = []
        for key in reference:
            for _ in range(int(rng.integers(0, 12))):
                seq = next_seq[key]
                roll = rng.random()
                if roll < 0.05:
                    seq -= 3  # late
                elif roll < 0.08:
                    seq -= 1  # repeated
                else:
                    next_seq[key] += 2 if roll < 0.12 else 1  # one lost, or in order
                packets.append((key, seq & 0xFFFF, int(rng.random() < 0.2), int(rng.integers(60, 1200))))
        packets.append(((1 << 32) | 99, 5, 1, 100))  # a stream of no counter
        # Sockets and streams interleaved, each stream's packets in their own order.
        queues = {k: [p for p in packets if p[0] == k] for k in {p[0] for p in packets}}
        arrival = [queues[packets[i][0]].pop(0) for i in rng.permutation(len(packets))]
        keys = np.array([p[0] for p in arrival], np.int64)
        seq = np.array([p[1] for p in arrival], np.int64)
        marker = np.array([p[2] for p in arrival], np.int64)
        size = np.array([p[3] for p in arrival], np.int64)
        unknown, slow = count_rtp(table, seq, marker, size, table.lookup(keys), 2.0)
        assert unknown == 1
        slow_total += slow
        for key, s, m, n in arrival:
            if key in reference:
                reference[key].add(s, n, bool(m), 2.0)
    table.store_all()
    for row, key in enumerate(table._keys):
        got, want = table.counters[row], reference[key]
        assert got.snapshot() == want.snapshot(), hex(key)
        assert (got.max_ext, got.last_seq, got.cycles) == (want.max_ext, want.last_seq, want.cycles)
        assert got.first_frame_at == want.first_frame_at
    assert reference[(2 << 32) | 12].first_frame_at == 2.0
    assert 0 < slow_total < 40 * 6  # most streams' batches took the array path


def test_replayed_payloads_are_aiortcs_with_the_picture_id():
    from aiortc.codecs.vpx import Vp8Encoder

    from bench.clip import vp8_payloads

    clip = EncodedClip(160, 120, 30, 300_000, seconds=0.2)
    for index in (0, 3):
        for picture_id in (5, 127, 128, 300, 0x7FFF):
            want = Vp8Encoder._packetize(clip.frames[index], picture_id)
            assert vp8_payloads(clip, index, picture_id) == want, (index, picture_id)
    assert len(vp8_payloads(clip, 0, 200)) > 1  # the keyframe takes several packets


def test_replay_sender_packets_parse_as_aiortcs_and_a_nack_gets_rtx():
    from aiortc.rtcrtpparameters import (
        RTCRtpCodecParameters,
        RTCRtpHeaderExtensionParameters,
        RTCRtpSendParameters,
    )
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unwrap_rtx

    from bench.clip import ABS_SEND_TIME, MID, ReplaySender, vp8_payloads

    clip = EncodedClip(160, 120, 30, 300_000, seconds=0.2)
    frames = []
    sender = ReplaySender(ReplayTrack(clip), 1111, 2222, frames.append)
    extensions = [
        RTCRtpHeaderExtensionParameters(id=4, uri=MID),
        RTCRtpHeaderExtensionParameters(id=3, uri=ABS_SEND_TIME),
    ]
    sender.configure(
        RTCRtpSendParameters(
            codecs=[
                RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97),
                RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=98, parameters={"apt": 97}),
            ],
            headerExtensions=extensions,
            muxId="0",
        )
    )
    names = HeaderExtensionsMap()
    names.configure(RTCRtpSendParameters(headerExtensions=extensions))
    sent = [RtpPacket.parse(data, names) for data in sender.frame_packets(0, 3000)]
    assert [p.payload for p in sent] == vp8_payloads(clip, 0, sender.picture_id - 1)
    assert [p.marker for p in sent] == [0] * (len(sent) - 1) + [1] and frames == [sent[-1].payload]
    assert [p.sequence_number for p in sent] == [(sent[0].sequence_number + i) & 0xFFFF for i in range(len(sent))]
    heads = {(p.ssrc, p.payload_type, p.timestamp, p.extensions.mid) for p in sent}
    assert heads == {(1111, 97, sent[0].timestamp, "0")}
    assert all(p.extensions.abs_send_time is not None for p in sent)
    lost = sent[1].sequence_number
    (rtx,) = [RtpPacket.parse(d, names) for d in sender.retransmit([lost, (lost + 1000) & 0xFFFF])]
    assert (rtx.ssrc, rtx.payload_type, rtx.timestamp) == (2222, 98, sent[1].timestamp)
    again = unwrap_rtx(rtx, payload_type=97, ssrc=1111)
    assert (again.sequence_number, again.payload) == (lost, sent[1].payload)
    assert sender.retransmitted == 1 and sender.packets == len(sent)


def test_consent_checks_are_answered_as_aioice_answers_them():
    import aioice.stun as stun

    from bench.batch_receive import binding_response

    password, addr = "x" * 22, ("127.0.0.1", 40000)
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes.update({"USERNAME": "abcd:efgh", "PRIORITY": 1, "ICE-CONTROLLING": 5})
    request.add_message_integrity(password.encode())
    answer = binding_response(bytes(request), addr, password.encode(), controlled=True)
    response = stun.parse_message(answer)  # checks the fingerprint
    assert response.check_message_integrity(password.encode())
    assert (response.message_method, response.message_class) == (stun.Method.BINDING, stun.Class.RESPONSE)
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == addr and "FINGERPRINT" in response.attributes
    # Not ours to answer: signed with another password, a role conflict, a response.
    assert binding_response(bytes(request), addr, b"y" * 22, controlled=True) is None
    assert binding_response(bytes(request), addr, password.encode(), controlled=False) is None
    assert binding_response(answer, addr, password.encode(), controlled=True) is None
