"""One UDP socket per ICE address for every server PC (sfu.udp_mux), with real aiortc peers on
loopback: media flows through the shared socket, offers without candidates connect, hostile
datagrams are dropped and counted without disturbing anyone, and every table drains on close."""

import asyncio
import os
import socket
import sys

import aioice.stun
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from sfu import peer
from sfu.api import ProducerStateChanged
from sfu.metrics import UDP_DATAGRAMS_DROPPED
from sfu.udp_mux import MAX_ADDRESSES, UdpMux, bind_socket, stun_request_ufrag

from .clients import Publisher, Subscriber, bounded, client_pc, eventually
from .helpers import MEETING, ref, subscribe


def candidate_ports(sdp: str) -> set[int]:
    return {int(line.split()[5]) for line in sdp.split("\r\n") if line.startswith("a=candidate:")}


def strip_candidates(sdp: str) -> str:
    """What the Carbonio web client sends: an SDP written before any candidate was gathered."""
    return "\r\n".join(
        line for line in sdp.split("\r\n")
        if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    )


def client_ice(pc: RTCPeerConnection):
    """The aioice connection under a client PC (every m-line is bundled on it)."""
    return pc.getTransceivers()[0].receiver.transport.transport._connection


def nominated_remote(pc: RTCPeerConnection) -> tuple[str, int]:
    return client_ice(pc)._nominated[1].remote_addr


def shared_address() -> tuple[str, int]:
    (address,) = peer.ice_sockets().local_addresses()
    return address


def stun_request(username: str) -> bytes:
    message = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
    )
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1
    message.add_message_integrity(b"not-the-password")
    message.add_fingerprint()
    return bytes(message)


def hostile_datagrams() -> list[bytes]:
    request = stun_request("zzzz:abcd")
    return [
        b"",
        b"\x00",
        b"\x80",  # 1 byte of "RTP"
        b"\x80\xc8",  # 2 bytes of "RTCP"
        request[:12],  # truncated STUN
        request,  # a STUN check for a ufrag nobody has
        bytes([0x80]) + os.urandom(1500),  # 1,501 bytes of "RTP": over pylibsrtp's limit
        bytes([0xBF]) + os.urandom(1999),  # 2,000 bytes of "RTCP"
        bytes([0xFF]) + os.urandom(99),  # garbage outside every RFC 7983 range
        bytes([0x45]) + os.urandom(40),  # TURN channel range: not ours
        bytes([0x16, 0xFE, 0xFD]) + os.urandom(60),  # DTLS-looking garbage
        bytes([0x80, 0x60]) + os.urandom(100),  # SRTP-looking garbage
        bytes([0x00, 0x01, 0x00, 0x08]) + b"\x21\x12\xa4\x42" + os.urandom(12) + b"\x00\x06\x00\x40" + b"x" * 4,
    ]


async def connected_publisher_and_subscriber(service, events):
    pub = Publisher()
    sub = Subscriber()
    await bounded(pub.publish(service, MEETING, "alice"))
    await events.wait(ProducerStateChanged, user_id="alice", kind="video", active=True)
    (stream,) = await subscribe(service, sub, "bob", [ref("alice")])
    await sub.wait_frames(stream.mid, 10)
    return pub, sub, stream.mid


async def test_every_server_pc_uses_the_one_shared_socket(service, events):
    pubs = [Publisher(start=1000 * i) for i in range(2)]
    subs = [Subscriber() for _ in range(2)]
    audio = client_pc()
    audio.addTrack(AudioStreamTrack())
    try:
        answers = [await bounded(p.publish(service, MEETING, f"pub{i}")) for i, p in enumerate(pubs)]
        offers = []
        for i, sub in enumerate(subs):
            await subscribe(service, sub, f"sub{i}", [ref("pub0"), ref("pub1")])
            offers.append(sub.pc.remoteDescription.sdp)
        await audio.setLocalDescription(await audio.createOffer())
        audio_answer = await bounded(service.audio_offer(MEETING, "sub0", audio.localDescription.sdp))
        await audio.setRemoteDescription(RTCSessionDescription(audio_answer, "answer"))

        host, port = shared_address()
        for sdp in [*answers, *offers, audio_answer]:
            assert candidate_ports(sdp) == {port}, sdp
        for sub in subs:
            for mid in sub.msids():
                await sub.wait_frames(mid, 10)
        for pc in [*(p.pc for p in pubs), *(s.pc for s in subs), audio]:
            await eventually(lambda pc=pc: pc.connectionState == "connected")
            assert nominated_remote(pc) == (host, port)
        (mux,) = peer.ice_sockets().muxes()
        sizes = mux.table_sizes()
        assert sizes["ufrags"] == 5 and sizes["endpoints"] == 5 and sizes["verified"] >= 5
    finally:
        for sub in subs:
            await sub.close()
        for p in pubs:
            await p.close()
        await audio.close()
        await service.close_meeting(MEETING)
    await eventually(lambda: mux.table_sizes() == dict.fromkeys(sizes, 0))


async def test_offers_and_answers_without_candidates_connect_through_the_shared_socket(service, events):
    pub = Publisher()
    sub = Subscriber()
    audio = client_pc()
    audio.addTrack(AudioStreamTrack())
    try:
        offer = strip_candidates(await pub.offer())
        assert "a=candidate" not in offer
        await pub.accept(await bounded(service.publish(MEETING, "alice", "video", offer)))
        await events.wait(ProducerStateChanged, user_id="alice", kind="video", active=True)

        server_offer = await bounded(service.update_subscriptions(MEETING, "bob", [ref("alice")], []))
        answer = strip_candidates(await sub.answer(server_offer))
        (stream,) = await bounded(service.answer_subscriber(MEETING, "bob", answer))
        await sub.wait_frames(stream.mid, 10)

        await audio.setLocalDescription(await audio.createOffer())
        audio_offer = strip_candidates(audio.localDescription.sdp)
        audio_answer = await bounded(service.audio_offer(MEETING, "bob", audio_offer))
        await audio.setRemoteDescription(RTCSessionDescription(audio_answer, "answer"))
        await eventually(lambda: audio.connectionState == "connected")

        # The server knew no address of these clients: it learned each from its STUN check.
        for pc in (pub.pc, sub.pc, audio):
            assert nominated_remote(pc) == shared_address()
            local = client_ice(pc)._nominated[1].local_candidate
            assert pc.remoteDescription.sdp.count("a=candidate:") == 1 and local.port > 0
    finally:
        await sub.close()
        await pub.close()
        await audio.close()


async def test_hostile_datagrams_are_dropped_and_media_keeps_flowing(service, events):
    """Issue 14 item 1: an empty datagram, or 1,501 bytes starting 128-191, used to close the
    PC owning the port; from a stranger or from the peer's own address, nothing may now."""
    pub, sub, mid = await connected_publisher_and_subscriber(service, events)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        before = dict(UDP_DATAGRAMS_DROPPED)
        targets = {nominated_remote(pub.pc), nominated_remote(sub.pc)}
        for _ in range(3):
            for data in hostile_datagrams():
                for target in targets:
                    stranger.sendto(data, target)
                    # From the clients' own sockets: addresses the server has verified.
                    for pc in (pub.pc, sub.pc):
                        client_ice(pc)._nominated[1].protocol.transport.sendto(data, target)
            await asyncio.sleep(0.05)
        frames = sub.tracks[mid].frames
        await sub.wait_frames(mid, frames + 30, timeout=15)
        assert pub.pc.connectionState == "connected" and sub.pc.connectionState == "connected"
        assert service.stats.peer_connections["connected"] == 2
        dropped = {k: UDP_DATAGRAMS_DROPPED[k] - before[k] for k in before}
        for reason in ("empty", "malformed", "too_long", "unknown_ufrag", "unknown_address"):
            assert dropped[reason] > 0, dropped
        assert service.stats.udp_datagrams_dropped is UDP_DATAGRAMS_DROPPED
    finally:
        stranger.close()
        await sub.close()
        await pub.close()


async def test_the_udp_port_setting_is_the_port_of_every_candidate(service, events):
    probe = bind_socket("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    peer.configure_ice(peer.IceSettings(addresses=("127.0.0.1",), udp_port=port))
    pub = Publisher()
    try:
        answer = await bounded(pub.publish(service, MEETING, "alice"))
        assert candidate_ports(answer) == {port}
        await eventually(lambda: pub.pc.connectionState == "connected")
        assert nominated_remote(pub.pc) == ("127.0.0.1", port)
    finally:
        await pub.close()
        await service.close()
        peer.configure_ice(peer.IceSettings(addresses=("127.0.0.1",)))


def test_a_port_in_use_is_one_clear_error():
    taken = bind_socket("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        peer.configure_ice(peer.IceSettings(addresses=("127.0.0.1",), udp_port=port))
        try:
            peer.bind_ice()
        except RuntimeError as exc:
            message = str(exc)
        else:
            raise AssertionError("bound a port in use")
        assert "[media] udp_port" in message and f"127.0.0.1:{port}" in message
        assert "\n" not in message
    finally:
        taken.close()
        peer.configure_ice(peer.IceSettings(addresses=("127.0.0.1",)))


# --- the demultiplexer's tables, with stand-in endpoints on a real socket --------------------


class Endpoint:
    component = 1

    def __init__(self) -> None:
        self.stun: list[bytes] = []
        self.data: list[bytes] = []

    def datagram_received(self, data, addr) -> None:
        self.stun.append(data)

    def deliver(self, data, component) -> None:
        self.data.append(data)


async def mux_and_sender():
    loop = asyncio.get_running_loop()
    sock = bind_socket("127.0.0.1", 0)
    _, mux = await loop.create_datagram_endpoint(lambda: UdpMux(sock), sock=sock)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    return mux, sender


async def test_mux_routes_stun_requests_by_ufrag_and_the_rest_by_verified_address():
    mux, sender = await mux_and_sender()
    a, b = Endpoint(), Endpoint()
    mux.attach("aaaa", a)
    mux.attach("bbbb", b)
    here = sender.getsockname()
    try:
        sender.sendto(stun_request("bbbb:x"), mux.address)
        sender.sendto(b"\x17\xfe\xfd" + b"d" * 20, mux.address)  # DTLS before any address is known
        await eventually(lambda: len(b.stun) == 1)
        await asyncio.sleep(0.05)
        assert a.stun == [] and b.data == []
        mux.learn(here, b, verified=True)  # b answered that check
        sender.sendto(b"\x17\xfe\xfd" + b"d" * 20, mux.address)
        sender.sendto(b"\x80\x60" + b"r" * 100, mux.address)
        await eventually(lambda: len(b.data) == 2)
        # A STUN request from b's address for a's ufrag still goes to a (by ufrag).
        sender.sendto(stun_request("aaaa:x"), mux.address)
        await eventually(lambda: len(a.stun) == 1)
        # a merely sending a check to b's verified address does not take it over ...
        mux.learn(here, a, verified=False)
        assert mux._by_addr[here] is b
        mux.detach(b)
        assert mux.table_sizes() == {"ufrags": 1, "addresses": 0, "verified": 0, "endpoints": 1}
        # ... but an address only learned on send yields to one that verifies it.
        mux.learn(here, a, verified=False)
        c = Endpoint()
        mux.attach("cccc", c)
        mux.learn(here, c, verified=True)
        assert mux._by_addr[here] is c
        mux.detach(a)
        mux.detach(c)
        assert mux.table_sizes() == dict.fromkeys(mux.table_sizes(), 0)
    finally:
        sender.close()
        mux.close()


async def test_mux_bounds_the_addresses_of_one_connection():
    mux, sender = await mux_and_sender()
    a = Endpoint()
    mux.attach("aaaa", a)
    try:
        for port in range(1, MAX_ADDRESSES + 10):
            mux.learn(("127.0.0.1", port), a, verified=port % 2 == 0)
        assert mux.table_sizes()["addresses"] == MAX_ADDRESSES
        try:
            mux.attach("aaaa", Endpoint())
        except ValueError:
            pass
        else:
            raise AssertionError("one ufrag attached twice")
        mux.detach(a)
        assert mux.table_sizes() == dict.fromkeys(mux.table_sizes(), 0)
        mux.learn(("127.0.0.1", 1), a, verified=True)  # a detached endpoint learns nothing
        assert mux.table_sizes()["addresses"] == 0
    finally:
        sender.close()
        mux.close()


def test_stun_request_ufrag_reads_the_local_ufrag_and_refuses_malformed_stun():
    request = stun_request("abcd:wxyz")
    assert stun_request_ufrag(request) == "abcd"
    response = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.RESPONSE
    )
    assert stun_request_ufrag(bytes(response)) is None
    for bad in (request[:19], request[:-1], request + b"\x00\x00\x00\x00", b"\x00\x01" + b"\x00" * 18):
        try:
            stun_request_ufrag(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")
    overrun = bytearray(request[:20]) + b"\x00\x06\x00\x40abcd"
    overrun[2:4] = (8).to_bytes(2, "big")
    try:
        stun_request_ufrag(bytes(overrun))
    except ValueError:
        pass
    else:
        raise AssertionError("accepted an attribute overrunning the message")


async def test_server_pcs_share_the_socket_but_client_pcs_keep_their_own(service, events):
    pub = Publisher()
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        await eventually(lambda: pub.pc.connectionState == "connected")
        client_port = client_ice(pub.pc)._nominated[1].local_candidate.port
        assert client_port != shared_address()[1]
        assert len(client_ice(pub.pc)._protocols) >= 1
        assert all(
            type(p).__name__ == "StunProtocol" for p in client_ice(pub.pc)._protocols
        )
    finally:
        await pub.close()


async def test_public_ip_is_written_with_the_shared_port(service, events):
    peer.configure_ice(peer.IceSettings(addresses=("127.0.0.1",), public_ip="203.0.113.7"))
    pub = Publisher()
    try:
        answer = await bounded(pub.publish(service, MEETING, "alice"))
        port = shared_address()[1]
        hosts = {line.split()[4] for line in answer.split("\r\n") if line.startswith("a=candidate:")}
        assert hosts == {"203.0.113.7"} and candidate_ports(answer) == {port}
    finally:
        await pub.close()
        peer.configure_ice(peer.IceSettings(addresses=("127.0.0.1",)))


def test_drop_counters_are_exposed_by_reason():
    from sfu.api import StatsReport
    from sfu.metrics import UDP_DROP_REASONS, MediaCollector, MediaStats

    report = StatsReport(workers={"0": MediaStats().snapshot()})
    (family,) = [
        f for f in MediaCollector(lambda: report).collect() if f.name == "meeting_sfu_udp_datagrams_dropped"
    ]
    samples = {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert set(samples) == set(UDP_DROP_REASONS)


async def test_ipv6_loopback_has_its_own_shared_socket(service, events):
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    finally:
        probe.close()
    peer.configure_ice(peer.IceSettings(addresses=("::1",)))
    pub = Publisher()
    try:
        answer = await bounded(pub.publish(service, MEETING, "alice"))
        ((host, port),) = peer.ice_sockets().local_addresses()
        assert host == "::1" and candidate_ports(answer) == {port}
        await eventually(lambda: pub.pc.connectionState == "connected")
        assert nominated_remote(pub.pc) == ("::1", port)
    finally:
        await pub.close()
        await service.close()
        peer.configure_ice(peer.IceSettings(addresses=("127.0.0.1",)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_MTU_DISCOVER is Linux's")
def test_shared_sockets_send_ipv4_without_fragmenting_and_still_carry_a_full_datagram():
    """The shared IPv4 sockets set don't-fragment without path-MTU discovery (so the kernel
    draws no IP identification per datagram): a datagram of the largest SRTP size still goes."""
    from sfu.udp_mux import IP_MTU_DISCOVER, IP_PMTUDISC_PROBE, SRTP_MAX_BYTES

    sock = bind_socket("127.0.0.1", 0)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_PROBE
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        sock.sendto(b"\x80" * SRTP_MAX_BYTES, receiver.getsockname())
        assert len(receiver.recv(65536)) == SRTP_MAX_BYTES
    finally:
        sock.close()
        receiver.close()
