"""The lean receive path of publishers' RTP (sfu.aiortc_hooks.LeanIngress): SRTP from the shared
socket straight to the producer, with what the publisher relies on kept (receiver reports, NACKs
answered by its RTX, REMB) -- and aiortc's own path when it is switched off."""

import asyncio

import pytest
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRrPacket, RtcpRtpfbPacket, RtpPacket

from sfu import aiortc_hooks, fastpath, peer

from .clients import Publisher, Subscriber, assert_counters_match, bounded, eventually
from .helpers import MEETING, media_stats, ref, router, subscribe


@pytest.fixture(params=["lean", "aiortc"])
def receive_path(request, monkeypatch):
    monkeypatch.setattr(fastpath, "lean_receive", request.param == "lean")
    return request.param


def _publisher_rtcp(pub: Publisher) -> tuple[list[RtcpRrPacket], list[list[int]]]:
    """Receiver reports and NACKed sequence numbers the publisher gets from the server."""
    reports: list[RtcpRrPacket] = []
    nacks: list[list[int]] = []

    def on_rtcp(packet) -> bool:
        if isinstance(packet, RtcpRrPacket):
            reports.append(packet)
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            nacks.append(list(packet.lost))
        return False

    aiortc_hooks.hook_sender_rtcp(pub.transceiver.sender, on_rtcp)
    return reports, nacks


async def test_subscriber_decodes_through_the_receive_path(service, events, receive_path):
    pub = Publisher()
    sub = Subscriber()
    reports, _ = _publisher_rtcp(pub)
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        streams = await subscribe(service, sub, "bob", [ref("alice")])
        received = await sub.wait_frames(streams[0].mid, 30)
        assert_counters_match(received, pub.track.count)
        producer = router(service).producers[("alice", "video")]
        if receive_path == "lean":
            ingress = producer.ingress
            assert ingress is not None
            # after the first packets (which teach aiortc's router the SSRC), nearly all go lean
            assert ingress.packets > 0.8 * producer.packets, (ingress.packets, producer.packets)
            assert ingress.failures == 0
            if fastpath.unprotect is not None:  # libsrtp's srtp_unprotect called from C
                assert ingress.unprotect is fastpath.unprotect
        else:
            assert producer.ingress is None
        # the publisher gets receiver reports about its SSRC, with the LSR of its sender reports
        ssrc = pub.transceiver.sender._ssrc
        await eventually(lambda: any(r.ssrc == ssrc and r.lsr for p in reports for r in p.reports), timeout=10)
        stats = await media_stats(service)
        assert stats.rtp_packets_in["video"] > 0
    finally:
        await sub.close()
        await pub.close()


async def test_packets_dropped_at_the_mux_are_nacked_and_repaired(service, events, receive_path):
    """Every 15th media datagram from the publisher is dropped at the server's socket: the
    server NACKs them, the publisher's RTX answers, the subscriber ends up missing none."""
    pub = Publisher()
    sub = Subscriber(decode=False)
    reports, nacks = _publisher_rtcp(pub)
    retransmitted: list[int] = []
    sender = pub.transceiver.sender
    original_retransmit = sender._retransmit

    async def retransmit(seq: int) -> None:
        retransmitted.append(seq)
        await original_retransmit(seq)

    sender._retransmit = retransmit
    dropped: list[int] = []
    state = {"n": 0, "on": False}

    def datagram_received(data: bytes, addr) -> None:
        # the publisher's media (its payload type, not RTCP, not RTX) while dropping is on
        if state["on"] and len(data) > 12 and 127 < data[0] < 192 and data[1] & 0x7F == pt[0]:
            state["n"] += 1
            if state["n"] % 15 == 0 and len(dropped) < 20:
                dropped.append(data[2] << 8 | data[3])
                return
        original_received(data, addr)

    pt = [-1]
    mux = None
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        (mux,) = peer.ice_sockets().muxes()
        original_received = mux.datagram_received
        mux.datagram_received = datagram_received
        streams = await subscribe(service, sub, "bob", [ref("alice")])
        producer = router(service).producers[("alice", "video")]
        pt[0] = producer.pt
        await eventually(lambda: sub.rtp_packets > 30)
        received_before = sub.rtp_packets
        state["on"] = True
        await eventually(lambda: len(dropped) >= 10, timeout=15)
        state["on"] = False
        # each drop was NACKed and retransmitted
        nacked = {s for lost in nacks for s in lost}
        await eventually(lambda: set(dropped) <= {s for lost in nacks for s in lost}, timeout=5)
        await eventually(lambda: set(dropped) <= set(retransmitted), timeout=5)
        assert set(dropped) <= nacked | {s for lost in nacks for s in lost}
        # the subscriber got them (forwarded from the RTX): its receiver counts no loss
        await eventually(lambda: sub.rtp_packets > received_before + 60)
        receiver = sub.pc.getTransceivers()[0].receiver

        async def lost() -> int:
            report = await receiver.getStats()
            return max(s.packetsLost for s in report.values() if s.type == "inbound-rtp")

        for _ in range(50):
            if await lost() <= 0:
                break
            await asyncio.sleep(0.1)
        assert await lost() <= 0
        # the publisher's receiver reports saw the loss (cumulative lost stays >= 0, RTX counted)
        ssrc = sender._ssrc
        await eventually(lambda: any(r.ssrc == ssrc for p in reports for r in p.reports), timeout=5)
        stats = await media_stats(service)
        assert stats.packets_lost["video"] >= len(dropped)  # sequence gaps, counted by the producer
        assert stats.rtp_packets_in["video"] > 0
        if receive_path == "lean":
            assert producer.ingress.packets > 0.8 * producer.packets
        assert streams
    finally:
        if mux is not None:
            del mux.datagram_received  # the class's own again
        await sub.close()
        await pub.close()


# --- NackTracker: the NACK state both paths share --------------------------------------------


def test_nack_tracker_reports_losses_per_ssrc_and_forgets_repaired_ones():
    tracker = aiortc_hooks.NackTracker()
    nacks = []
    for n in range(50):
        if tracker.seen(1, (65530 + n) & 0xFFFF):  # wraps
            nacks.append((1, sorted(tracker.missing_of(1))))
        if n not in (20, 21, 22) and tracker.seen(2, 1200 + n):
            nacks.append((2, sorted(tracker.missing_of(2))))
    assert nacks == [(2, [1220, 1221, 1222])]
    tracker.seen(2, 1221)  # repaired (an unwrapped RTX)
    assert tracker.missing_of(2) == {1220, 1222}
    # aiortc's path uses the same state through add() / missing
    assert tracker.add(RtpPacket(payload_type=96, sequence_number=1252, ssrc=2))
    assert tracker.missing == {1220, 1222, 1250, 1251}


def test_nack_tracker_is_bounded():
    tracker = aiortc_hooks.NackTracker()
    tracker.seen(1, 0)
    assert tracker.seen(1, 30000)  # a jump: only the last NACK_HISTORY are asked for
    assert len(tracker.missing_of(1)) == aiortc_hooks.NACK_HISTORY  # as aiortc keeps them
    for ssrc in range(100):
        tracker.seen(ssrc, 1)
    assert len(tracker._states) == aiortc_hooks.NackTracker.MAX_SSRCS


def test_receive_statistics_match_aiortc():
    """count_rtp keeps aiortc's StreamStatistics as its own add() does (RR fields)."""
    from aiortc.rtcrtpreceiver import StreamStatistics

    ours, theirs = StreamStatistics(90000), StreamStatistics(90000)
    seqs = [65000 + i for i in range(600) if i % 7] + [65000 + 7, 65000 + 14]
    for i, seq in enumerate(seqs):
        seq &= 0xFFFF
        ts = (seq * 3000 + (i % 3) * 10) & 0xFFFFFFFF
        theirs.add(RtpPacket(sequence_number=seq, timestamp=ts))
        aiortc_hooks.count_rtp(ours, seq, ts, 0)  # arrival: only the jitter depends on it
    for field in ("base_seq", "max_seq", "cycles", "packets_received", "packets_lost", "packets_expected"):
        assert getattr(ours, field) == getattr(theirs, field), field


def test_compiled_unprotect_matches_pylibsrtp_and_refuses_replays_and_bad_tags():
    """The lean path unprotects with libsrtp's srtp_unprotect called from C (sfu/_fastpath.c) on
    pylibsrtp's own session: the same plaintext, None where pylibsrtp raises."""
    import os

    import pylibsrtp

    if fastpath.unprotect is None:
        pytest.skip(fastpath.describe())
    key = os.urandom(30)
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    ours = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    theirs = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    ctx = aiortc_hooks.srtp_context(ours)
    for seq in range(5):
        plain = RtpPacket(payload_type=96, sequence_number=seq, ssrc=7, payload=bytes(range(200))).serialize()
        packet = tx.protect(plain)
        assert fastpath.unprotect(ctx, packet) == theirs.unprotect(packet) == plain
        assert fastpath.unprotect(ctx, packet) is None  # a replay
        with pytest.raises(pylibsrtp.Error):
            theirs.unprotect(packet)
    forged = tx.protect(plain[:2] + b"\x00\x09" + plain[4:])
    assert fastpath.unprotect(ctx, forged[:-1] + bytes([forged[-1] ^ 1])) is None  # bad tag
    assert fastpath.unprotect(ctx, b"\x80" * 1600) is None  # longer than the SRTP buffer


@pytest.mark.parametrize(
    ("env", "lean"),
    [({}, True), ({"MEETING_SFU_LEAN_RECEIVE": "0"}, False), ({"MEETING_SFU_FASTPATH": "0"}, False)],
)
def test_the_environment_switches_the_lean_path_off(env, lean):
    import os
    import subprocess
    import sys

    code = "from sfu import fastpath\nprint(fastpath.lean_receive, fastpath.describe_receive())\n"
    base = {k: v for k, v in os.environ.items() if k not in ("MEETING_SFU_LEAN_RECEIVE", "MEETING_SFU_FASTPATH")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(lean)), out.stdout


def test_the_bitrate_estimator_fed_per_group_sees_the_same_groups_and_overuse():
    """GroupedEstimate gives aiortc's RemoteBitrateEstimator one packet per group of packets
    sent within 4 ms: its offset and overuse state after every frame are those of feeding every
    packet, through a congestion episode; its REMB follows within a few percent (the incoming
    rate counts a group's later packets one group late), one per group at most instead of one
    per packet while overusing."""
    from aiortc.rate import RemoteBitrateEstimator

    every, grouped = RemoteBitrateEstimator(), RemoteBitrateEstimator()
    feed = aiortc_hooks.GroupedEstimate()
    last = {"every": None, "grouped": None}
    counts = {"every": 0, "grouped": 0}
    gaps = []
    states = set()
    queue = 0.0
    for frame in range(30 * 20):
        t = frame / 30
        if 8 <= t < 11:
            queue += 0.003  # the link falls behind: each frame waits longer
        else:
            queue = max(0.0, queue - 0.004)
        for i in range(5):
            sent = 1000.0 + t + i * 0.0002
            arrival = int((sent + 0.02 + queue + i * 0.0008) * 1000)
            abs_time = int(sent * (1 << 18)) & 0xFFFFFF
            for name, remb in (
                ("every", every.add(arrival, abs_time, 1100, 1234)),
                ("grouped", feed(grouped, arrival, abs_time, 1100, 1234)),
            ):
                if remb is not None:
                    last[name] = remb[0]
                    counts[name] += 1
        assert grouped.detector.state() == every.detector.state(), t
        assert grouped.estimator.offset() == pytest.approx(every.estimator.offset()), t
        states.add(every.detector.state())
        if last["every"] is not None and last["grouped"] is not None:
            gaps.append(abs(last["grouped"] - last["every"]) / last["every"])
    assert len(states) > 1  # the episode was seen as overuse
    assert len(gaps) > 30 * 15 and max(gaps) < 0.15
    assert 0 < counts["grouped"] <= counts["every"] / 2  # not one per packet while overusing
