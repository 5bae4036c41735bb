"""The compiled forwarding fast path (sfu/_fastpath.c) against the pure-Python path.

- On synthetic packets: a consumer forwarded in C and its twin forwarded by Consumer.forward,
  with the same state and the same SRTP key, send byte-identical SRTP (and keep identical
  histories and counters), while the path is switched packet by packet.
- Through real aiortc peers: a decoding subscriber gets the publisher's frames from the fast
  path; a copy that cannot be sent is counted and dropped without stopping the other consumers.
- `MEETING_SFU_FASTPATH=0` selects the pure-Python path (and its StreamBase) at import.
"""

import os
import socket
import subprocess
import sys

import pylibsrtp
import pytest

from sfu import fastpath
from sfu.aiortc_hooks import SendPath
from sfu.consumer import Consumer, SendParameters, StreamState
from sfu.metrics import MediaStats
from sfu.producer import CodecChoice, Producer
from sfu.rtp import extension_block

from .clients import Publisher, Subscriber, assert_counters_match, bounded, eventually
from .helpers import MEETING, ref, router, subscribe
from .synthetic_rtp import rtp, vp8_payload

needs_extension = pytest.mark.skipif(not fastpath.available, reason=fastpath.describe())

PT, OUT_PT, OUT_SSRC, SRC_SSRC = 96, 101, 0x1234ABCD, 777
KEY = bytes(range(30))  # AES128_CM_SHA1_80 master key + salt


def _tx_session() -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    return pylibsrtp.Session(policy)


def _producer() -> Producer:
    codec = CodecChoice("video/VP8", 90000, PT, None, ())
    return Producer("m", "pub", "video", codec, [], on_active=lambda p: None, on_peer_lost=lambda p: None,
                    stats=MediaStats())


def _bind(consumer: Consumer, path: SendPath) -> None:
    before, after = extension_block(1, "3", 2)
    consumer.bind(SendParameters(pt=OUT_PT, rtx_pt=None, ssrc=OUT_SSRC, rtx_ssrc=0, ext_before=before,
                                 ext_after=after, has_abs=True, path=path))
    consumer.resume()


def _packets():
    """A keyframe, then frames of 1-3 packets with markers, padding, a large packet, a sequence
    wrap, a late (reordered) packet, and one too long for SRTP."""
    seq, ts = 65500, 4_294_960_000
    out = [rtp(PT, seq, ts, SRC_SSRC, vp8_payload(1, 1, keyframe=True), marker=True)]
    for frame in range(60):
        ts += 3000
        parts = 1 + frame % 3
        for i in range(parts):
            seq = (seq + 1) & 0xFFFF
            size = 1100 if frame == 7 else 30 + frame
            payload = vp8_payload(2 + frame, 2 + frame, start=i == 0, body=bytes([frame]) * size)
            out.append(rtp(PT, seq, ts, SRC_SSRC, payload, marker=i == parts - 1, padding=4 if frame == 9 else 0))
        if frame == 20:
            out.append(out[-2])  # a late duplicate: older sequence number, no max_seq move
    out.append(rtp(PT, (seq + 1) & 0xFFFF, ts + 3000, SRC_SSRC, vp8_payload(99, 99, body=b"x" * 1400)))
    return out


@needs_extension
async def test_fast_path_sends_what_the_python_path_sends_while_switching_paths(monkeypatch):
    producer = _producer()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    try:
        state = StreamState()
        twin_state = StreamState()
        for name in ("max_seq", "max_ts", "rtx_seq"):
            setattr(twin_state, name, getattr(state, name))
        fast = Consumer(producer, "fast", state)
        slow = Consumer(producer, "slow", twin_state)
        session_fast, session_slow = _tx_session(), _tx_session()
        fd = fastpath.socket_fd(tx.fileno())
        _bind(fast, SendPath(session_fast.protect, tx.sendto, rx.getsockname(), session_fast, fd))
        slow_out: list[bytes] = []
        _bind(slow, SendPath(session_slow.protect, lambda data, addr: slow_out.append(data), None))
        assert fast.fast_send and not slow.fast_send
        producer.add_consumer(fast)
        producer.add_consumer(slow)
        fast_out: list[bytes] = []
        taken = {"c": 0}
        real_forward = fastpath.forward

        def counting_forward(*args):
            sent, errors, rest = real_forward(*args)
            taken["c"] += sent
            return sent, errors, rest

        monkeypatch.setattr(fastpath, "forward", counting_forward)
        for i, packet in enumerate(_packets()):
            monkeypatch.setattr(fastpath, "enabled", (i // 5) % 2 == 0)  # switch every 5 packets
            producer.on_rtp(packet)
            while len(fast_out) < len(slow_out):
                fast_out.append(rx.recv(2048))
        assert taken["c"] > 30  # the C path did forward most of them
        assert len(slow_out) > 60 and fast_out == slow_out
        for name in ("max_seq", "max_ts", "packets", "octets", "seq_off", "ts_off", "src_ssrc", "last_time"):
            assert getattr(fast, name) == getattr(slow, name), name
        # A retransmission is rebuilt from the producer's ring alike, whichever path sent it.
        sent_seqs = {int.from_bytes(p[2:4], "big") for p in slow_out}
        rebuilt = [(fast.rebuild(q), slow.rebuild(q)) for q in sorted(sent_seqs)]
        assert all(a is not None and a == b for a, b in rebuilt)
        # Dropped on both paths: the late duplicate (SRTP replay check) and the packet too long
        # for SRTP; a copy the C path drops is counted with the send errors.
        assert fast.dropped + producer.stats.send_errors == slow.dropped == 2
        rx.setblocking(False)
        with pytest.raises(BlockingIOError):
            rx.recv(2048)  # nothing more was sent
        # The state survives the consumer, as the Python path's does.
        fast.save_state(state)
        assert (state.max_seq, state.packets) == (fast.max_seq, fast.packets)
    finally:
        rx.close()
        tx.close()


@needs_extension
async def test_a_real_subscriber_decodes_frames_from_the_fast_path(service, events, monkeypatch):
    taken = {"sent": 0}
    real_forward = fastpath.forward

    def counting_forward(*args):
        sent, errors, rest = real_forward(*args)
        taken["sent"] += sent
        return sent, errors, rest

    monkeypatch.setattr(fastpath, "forward", counting_forward)
    pub = Publisher()
    sub = Subscriber()
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        (stream,) = await subscribe(service, sub, "bob", [ref("alice")])
        received = await sub.wait_frames(stream.mid, 30)
        assert_counters_match(received, pub.track.count)
        assert received.errors == 0
        consumer = router(service).subscribers["bob"].consumers[0]
        assert consumer.fast_send
        assert taken["sent"] >= 0.8 * consumer.packets > 0
    finally:
        await sub.close()
        await pub.close()


@needs_extension
async def test_a_copy_that_cannot_be_sent_is_dropped_and_the_others_go_on(service, events):
    pub = Publisher()
    subs = [Subscriber(decode=False) for _ in range(3)]
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        for i, sub in enumerate(subs):
            await subscribe(service, sub, f"bob{i}", [ref("alice")])
        await eventually(lambda: all(s.rtp_packets > 10 for s in subs))
        # The middle consumer of the batch now sends to an IPv6 address on the IPv4 socket:
        # each of its copies fails in sendmmsg.
        transport = router(service).subscribers["bob1"]
        slot = transport.slots[0]
        path = slot.params.path
        bad = SendPath(path.protect, path.sendto, ("::1", path.addr[1]), path.srtp, path.fd)
        assert fastpath.attach_send(slot.consumer, bad)
        errors0 = service.stats.send_errors
        before = [s.rtp_packets for s in subs]
        await eventually(lambda: service.stats.send_errors - errors0 >= 20)
        # Its neighbours in the batch (before and after it) still get every packet.
        await eventually(lambda: subs[0].rtp_packets - before[0] >= 20 and subs[2].rtp_packets - before[2] >= 20)
        assert subs[1].rtp_packets - before[1] <= 3  # copies already in flight when it was switched
    finally:
        for sub in subs:
            await sub.close()
        await pub.close()


def test_the_environment_selects_the_pure_python_path():
    code = (
        "from sfu import fastpath, consumer\n"
        "assert not fastpath.available and not fastpath.enabled\n"
        "assert consumer.Consumer.__mro__[1] is fastpath.StreamBase\n"
        "assert fastpath.StreamBase.__module__ == 'sfu.fastpath'\n"
        "print(fastpath.describe())\n"
    )
    env = dict(os.environ, MEETING_SFU_FASTPATH="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pure Python (MEETING_SFU_FASTPATH=0)" in out.stdout


def test_no_consumer_class_shadows_the_shared_state():
    """A slot of a Consumer (sub)class named like a StreamBase attribute would hide it from the C
    path: the two paths would then keep two different sequence states."""
    from sfu.simulcast import SimulcastConsumer

    shared = {name for name in dir(fastpath.StreamBase) if not name.startswith("__")}
    assert {"max_seq", "seq_off", "ts_off", "packets"} <= shared
    for cls in (Consumer, SimulcastConsumer):
        for klass in cls.__mro__:
            if klass is fastpath.StreamBase or klass is object:
                continue
            assert not set(vars(klass).get("__slots__", ())) & shared, klass
