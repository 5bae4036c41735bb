"""The lean RTCP path of subscriber connections (sfu.aiortc_hooks.RtcpIngress) and their sender
reports in batches (sfu.aiortc_hooks.SenderReports): the same handlers run, the same reports go
out, on both paths -- and aiortc's own when they are switched off."""

import asyncio
import os

import pytest
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRrPacket, RtcpRtpfbPacket

from sfu import aiortc_hooks, fastpath

from .clients import Publisher, Subscriber, bounded, eventually
from .helpers import MEETING, media_stats, ref, router, subscribe


@pytest.fixture(params=["lean", "aiortc"])
def rtcp_path(request, monkeypatch):
    monkeypatch.setattr(fastpath, "lean_rtcp", request.param == "lean")
    return request.param


async def _remote_outbound(receiver) -> list:
    """What the client learned from the server's sender reports."""
    return [s for s in (await receiver.getStats()).values() if s.type == "remote-outbound-rtp"]


async def test_subscriber_rtcp_reaches_the_same_handlers_on_both_paths(service, events, rtcp_path):
    """Receiver reports (RTT), REMB, PLI and NACK from a subscriber are handled, and its client
    gets sender reports that match what was sent, whichever path carries them."""
    pub = Publisher()
    sub = Subscriber()
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        (stream,) = await subscribe(service, sub, "bob", [ref("alice")])
        await sub.wait_frames(stream.mid, 20)
        transport = router(service).subscribers["bob"]
        (slot,) = transport.slots
        receiver = sub.pc.getTransceivers()[0].receiver
        # sender reports: the client knows what the server sent
        for _ in range(60):
            sr = await _remote_outbound(receiver)
            if sr and sr[0].packetsSent > 0:
                break
            await asyncio.sleep(0.1)
        assert sr and 0 < sr[0].packetsSent <= (await media_stats(service)).rtp_packets_out["video"]
        # REMB and receiver reports with the LSR of those sender reports (an RTT)
        await eventually(lambda: slot.remb is not None, timeout=10)
        await eventually(lambda: transport.stats.rtt_seconds.count > 0, timeout=10)
        # PLI and NACK, sent by the client's receiver
        media_ssrc = slot.ssrc
        plis = transport.stats.plis_received
        await receiver._send_rtcp_pli(media_ssrc)
        await eventually(lambda: transport.stats.plis_received == plis + 1)
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=receiver._RTCRtpReceiver__rtcp_ssrc, media_ssrc=media_ssrc)
        nack.lost = [slot.consumer.max_seq]
        nacks = transport.stats.nacks_received
        await receiver._send_rtcp(nack)
        await eventually(lambda: transport.stats.nacks_received == nacks + 1)
        await eventually(lambda: transport.stats.retransmissions + transport.stats.retransmissions_refused > 0)
        ingress = transport.rtcp_ingress
        if rtcp_path == "lean":
            assert ingress is not None and ingress.packets > 0
            assert ingress.failures == 0 and ingress.suspended == 0
            if fastpath.unprotect_rtcp is not None:  # libsrtp's srtp_unprotect_rtcp called from C
                assert ingress.unprotect is fastpath.unprotect_rtcp
            assert aiortc_hooks.sender_reports().sent > 0
        else:
            assert ingress is None
    finally:
        await sub.close()
        await pub.close()


@pytest.fixture
def lean_rtcp(monkeypatch):
    monkeypatch.setattr(fastpath, "lean_rtcp", True)  # the default, also without the extension


async def test_a_forged_srtcp_datagram_from_a_subscriber_is_dropped_and_counted(lean_rtcp, service, events):
    """SRTCP that does not authenticate, from the subscriber's own address, changes nothing:
    counted as a failure, its stream goes on."""
    pub = Publisher()
    sub = Subscriber(decode=False)
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        await subscribe(service, sub, "bob", [ref("alice")])
        await eventually(lambda: sub.rtp_packets > 30)
        transport = router(service).subscribers["bob"]
        ingress = transport.rtcp_ingress
        assert ingress is not None
        connection = sub.pc.getTransceivers()[0].receiver.transport.transport._connection
        before = sub.rtp_packets
        for size in (8, 30, 200):  # RTCP receiver-report headers with garbage behind
            await connection.send(bytes([0x80, 201]) + os.urandom(size - 2))
        await eventually(lambda: ingress.failures == 3)
        await eventually(lambda: sub.rtp_packets > before + 30)
        assert ingress.suspended == 0
    finally:
        await sub.close()
        await pub.close()


async def test_sender_reports_of_every_subscriber_come_from_one_scheduler(lean_rtcp, service, events):
    """Four subscribers each get a sender report about every 0.5-1.5 s, from the event loop's
    SenderReports; it forgets each subscriber m-line once it is closed (bounded)."""
    reports = aiortc_hooks.sender_reports()
    pub = Publisher()
    subs = [Subscriber(decode=False) for _ in range(4)]
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        for i, sub in enumerate(subs):
            await subscribe(service, sub, f"viewer-{i}", [ref("alice")])
        await eventually(lambda: all(s.rtp_packets > 10 for s in subs))
        assert reports.active == 4
        sent = reports.sent
        counts = []
        for sub in subs:
            (sr,) = await _remote_outbound(sub.pc.getTransceivers()[0].receiver) or [None]
            counts.append(sr.packetsSent if sr else 0)
        await asyncio.sleep(3.2)
        assert reports.sent - sent >= 4 * 2  # at least every 1.5 s each
        assert reports.sent - sent <= 4 * 8  # at most every 0.5 s each (and a tick early)
        for sub, count in zip(subs, counts, strict=True):
            (sr,) = await _remote_outbound(sub.pc.getTransceivers()[0].receiver)
            assert sr.packetsSent > count
        for i in range(4):
            await bounded(service.remove_participant(MEETING, f"viewer-{i}"))
        await eventually(lambda: reports.active == 0)
    finally:
        for sub in subs:
            await sub.close()
        await pub.close()


def test_compiled_rtcp_protect_and_unprotect_match_pylibsrtp():
    """The batched sender reports protect with libsrtp's srtp_protect_rtcp and the lean path
    unprotects with srtp_unprotect_rtcp, both called from C on pylibsrtp's own sessions: what
    pylibsrtp gives, and None where it raises (replays, bad tags, too short or too long)."""
    import pylibsrtp

    if fastpath.unprotect_rtcp is None:
        pytest.skip(fastpath.describe())
    key = os.urandom(30)
    outbound = pylibsrtp.Policy.SSRC_ANY_OUTBOUND
    inbound = pylibsrtp.Policy.SSRC_ANY_INBOUND
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=outbound))
    ours_tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=outbound))
    ours = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=inbound))
    theirs = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=inbound))
    ctx = aiortc_hooks.srtp_context(ours)
    for n in range(5):
        plain = bytes(RtcpRrPacket(ssrc=7 + n))
        packet = tx.protect_rtcp(plain)
        assert fastpath.unprotect_rtcp(ctx, packet) == theirs.unprotect_rtcp(packet) == plain
        assert fastpath.unprotect_rtcp(ctx, packet) is None  # a replay
        with pytest.raises(pylibsrtp.Error):
            theirs.unprotect_rtcp(packet)
        # protected from C: pylibsrtp reads it
        ours_packet = fastpath.protect_rtcp(aiortc_hooks.srtp_context(ours_tx), plain + bytes(4 * n))
        assert ours_packet is not None
        verify = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=inbound))
        assert verify.unprotect_rtcp(ours_packet) == plain + bytes(4 * n)
    forged = tx.protect_rtcp(bytes(RtcpRrPacket(ssrc=99)))
    assert fastpath.unprotect_rtcp(ctx, forged[:-1] + bytes([forged[-1] ^ 1])) is None  # bad tag
    assert fastpath.unprotect_rtcp(ctx, b"\x80\xc9\x00") is None  # shorter than a header
    assert fastpath.unprotect_rtcp(ctx, b"\x80" * 1600) is None  # longer than the SRTP buffer
    assert fastpath.protect_rtcp(aiortc_hooks.srtp_context(ours_tx), b"\x80" * 1400) is None  # no room


def test_the_lean_path_hands_each_packet_to_whom_aiortc_routes_it():
    """Receiver reports, NACK, PLI and REMB are looked up directly, the rest by aiortc's router:
    the same recipients as RtpRouter.route_rtcp for each, each once."""
    from aiortc.rtcdtlstransport import RtpRouter
    from aiortc.rtp import (
        RTCP_PSFB_APP,
        RTCP_PSFB_PLI,
        RtcpByePacket,
        RtcpPsfbPacket,
        RtcpReceiverInfo,
        RtcpSenderInfo,
        RtcpSrPacket,
        pack_remb_fci,
    )

    routing = RtpRouter()
    senders = {ssrc: f"sender-{ssrc}" for ssrc in (11, 12, 13)}
    for ssrc, sender in senders.items():
        routing.register_sender(sender, ssrc)
    routing.register_receiver("receiver-21", ssrcs=[21], payload_types=[96])

    def info(ssrc: int) -> RtcpReceiverInfo:
        return RtcpReceiverInfo(ssrc=ssrc, fraction_lost=0, packets_lost=0, highest_sequence=1, jitter=0, lsr=0, dlsr=0)

    packets = [
        RtcpRrPacket(ssrc=1, reports=[info(11), info(12), info(11), info(99)]),
        RtcpRrPacket(ssrc=1),
        RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=13),
        RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=98),
        RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=12),
        RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(500000, [11, 13, 97])),
        RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=b"not a remb"),
        RtcpSrPacket(ssrc=21, sender_info=RtcpSenderInfo(1, 2, 3, 4), reports=[info(13)]),
        RtcpByePacket(sources=[21, 11]),
    ]
    for packet in packets:
        ours = list(aiortc_hooks._rtcp_recipients(routing, packet))
        assert len(ours) == len(set(ours))
        assert set(ours) == routing.route_rtcp(packet), packet
