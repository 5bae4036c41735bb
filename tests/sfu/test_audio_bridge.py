"""The audio bridge with real aiortc client peers on 127.0.0.1: each participant sends his own
sine tone and must hear the others' tones (numpy FFT of what his client decodes), never his own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import itertools
import time

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from control_api.meetings import media_status
from sfu import aiortc_hooks
from sfu.api import MediaError
from sfu.audio import AudioBridge, AudioSettings

RATE = 48000
FRAME = 960
TONES = {"alice": 440.0, "bob": 880.0, "carol": 1320.0}
LISTEN = 0.6  # seconds of received audio analysed


async def bounded(aw, timeout: float = 10.0):
    return await asyncio.wait_for(aw, timeout)


class ToneTrack(MediaStreamTrack):
    """A microphone that plays a sine tone, 20 ms s16 mono frames at 48 kHz in real time."""

    kind = "audio"

    def __init__(self, frequency: float, amplitude: float = 0.25) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._n * FRAME / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(FRAME) + self._n * FRAME) / RATE
        wave = self.amplitude * 32767 * np.sin(2 * np.pi * self.frequency * t)
        frame = av.AudioFrame.from_ndarray(
            wave.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = self._n * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self._n += 1
        return frame


class Client:
    """A participant's browser: one sendrecv audio PC, what it decodes kept for the last 2 s,
    and every RTP packet of the mix seen at its DTLS transport (arrival time, seq, timestamp)."""

    def __init__(self, user: str, frequency: float) -> None:
        self.user = user
        self.tone = ToneTrack(frequency)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(self.tone)
        self.samples = np.zeros(0, dtype=np.int16)
        self.frames = 0
        self.rtp: list[tuple[float, int, int]] = []
        self._reader: asyncio.Task | None = None
        self._hooked = False

        @self.pc.on("track")
        def on_track(track) -> None:
            self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                data = frame.to_ndarray().reshape(-1)
                if frame.layout.name == "stereo":
                    data = data[::2]
                self.samples = np.concatenate([self.samples, data])[-2 * RATE:]
                self.frames += 1

    def _on_rtp(self, data: bytes) -> None:
        if len(self.rtp) < 10000:
            self.rtp.append(
                (time.monotonic(), (data[2] << 8) | data[3], int.from_bytes(data[4:8], "big"))
            )

    async def offer(self) -> str:
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        return self.pc.localDescription.sdp

    async def connect(self, bridge: AudioBridge) -> None:
        answer = await bounded(bridge.offer(self.user, await self.offer()))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        if not self._hooked:
            dtls = self.pc.getTransceivers()[0].receiver.transport
            aiortc_hooks.hook_rtp_ingress(dtls, self._on_rtp)
            self._hooked = True

    def heard(self, seconds: float = LISTEN) -> dict[float, float]:
        """Amplitude (fraction of full scale) of each test tone in the last `seconds` received,
        from the energy of its FFT band (Parseval, Hann window)."""
        x = self.samples[-int(seconds * RATE):].astype(np.float64) / 32767
        if x.size < RATE // 4:
            return {f: 0.0 for f in TONES.values()}
        window = np.hanning(x.size)
        power = np.abs(np.fft.rfft(x * window)) ** 2
        freqs = np.fft.rfftfreq(x.size, 1 / RATE)
        scale = 4.0 / (x.size * float(np.sum(window**2)))
        out = {}
        for f in TONES.values():
            band = (freqs > f - 20) & (freqs < f + 20)
            out[f] = float(np.sqrt(np.sum(power[band]) * scale))
        return out

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await bounded(self.pc.close())


class Talking:
    """Records on_talking calls and waits for one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self._changed = asyncio.Event()

    def __call__(self, user: str, talking: bool) -> None:
        self.calls.append((user, talking))
        self._changed.set()

    async def wait(self, user: str, talking: bool, timeout: float = 5.0) -> None:
        async def loop() -> None:
            while (user, talking) not in self.calls:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)


PRESENT = 0.12  # tones are sent at 0.25 of full scale
ABSENT = 0.01


async def hears(client: Client, present: set[str], absent: set[str], timeout: float = 6.0) -> None:
    """Wait until every tone of `present` is heard by `client` and none of `absent` is."""
    deadline = time.monotonic() + timeout
    while True:
        heard = client.heard()
        ok = all(heard[TONES[u]] > PRESENT for u in present) and all(
            heard[TONES[u]] < ABSENT for u in absent
        )
        if ok:
            return
        if time.monotonic() > deadline:
            levels = {u: round(heard[f], 3) for u, f in TONES.items()}
            raise AssertionError(f"{client.user} hears {levels}; want {present} without {absent}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def talking():
    return Talking()


@pytest.fixture
async def bridge(talking):
    b = AudioBridge("meeting-a", talking, AudioSettings(silence_packets=15))
    yield b
    await bounded(b.close())


@pytest.fixture
async def clients(bridge):
    made = {user: Client(user, f) for user, f in TONES.items()}
    for client in made.values():
        await client.connect(bridge)
    yield made
    for client in made.values():
        with contextlib.suppress(Exception):
            await client.close()


async def unmute_all(bridge: AudioBridge) -> None:
    for user in TONES:
        bridge.set_enabled(user, True)


async def test_each_hears_the_others_and_not_himself(bridge, clients):
    await unmute_all(bridge)
    for user, client in clients.items():
        await hears(client, present=set(TONES) - {user}, absent={user})


async def test_participants_start_muted(bridge, clients):
    await asyncio.sleep(1.0)
    for client in clients.values():
        assert client.frames > 20  # the mix flows even when nobody may talk
        await hears(client, present=set(), absent=set(TONES))
    bridge.set_enabled("alice", True)
    await hears(clients["bob"], present={"alice"}, absent={"bob", "carol"})
    await hears(clients["alice"], present=set(), absent=set(TONES))


async def test_mute_removes_a_tone_and_unmute_brings_it_back(bridge, clients):
    await unmute_all(bridge)
    await hears(clients["carol"], present={"alice", "bob"}, absent={"carol"})
    bridge.set_enabled("alice", False)
    await hears(clients["carol"], present={"bob"}, absent={"alice", "carol"})
    await hears(clients["bob"], present={"carol"}, absent={"alice", "bob"})
    bridge.set_enabled("alice", False)  # no change
    bridge.set_enabled("alice", True)
    await hears(clients["carol"], present={"alice", "bob"}, absent={"carol"})


async def test_talking_starts_for_the_loud_speaker_and_stops_after_silence(
    bridge, clients, talking
):
    clients["bob"].tone.amplitude = 0.0
    clients["carol"].tone.amplitude = 0.001  # -60 dBov: below the talking threshold
    await unmute_all(bridge)
    await talking.wait("alice", True)
    assert bridge.is_talking("alice")
    clients["alice"].tone.amplitude = 0.0
    await talking.wait("alice", False)
    await asyncio.sleep(0.3)
    assert [c for c in talking.calls if c[0] == "alice"] == [("alice", True), ("alice", False)]
    assert all(user == "alice" for user, _ in talking.calls)


async def test_muting_a_talker_ends_his_talking(bridge, clients, talking):
    bridge.set_enabled("bob", True)
    await talking.wait("bob", True)
    bridge.set_enabled("bob", False)
    await talking.wait("bob", False, timeout=1.0)


async def test_leaving_keeps_the_others_mix_without_a_gap(bridge, clients):
    await unmute_all(bridge)
    await hears(clients["bob"], present={"alice", "carol"}, absent={"bob"})
    before = len(clients["bob"].rtp)
    await bounded(bridge.remove("alice"))
    assert "alice" not in bridge.participants()
    await hears(clients["bob"], present={"carol"}, absent={"alice", "bob"})
    await hears(clients["carol"], present={"bob"}, absent={"alice", "carol"})
    # bob's stream went on packet after packet: consecutive sequence numbers and timestamps
    packets = clients["bob"].rtp[before - 5:]
    for (_, seq0, ts0), (_, seq1, ts1) in itertools.pairwise(packets):
        assert (seq1 - seq0) & 0xFFFF == 1
        assert (ts1 - ts0) & 0xFFFFFFFF == FRAME
    await bounded(bridge.remove("alice"))  # again: a no-op


async def test_the_mix_is_clocked_every_20_ms(bridge, clients):
    await asyncio.sleep(1.5)
    rtp = clients["alice"].rtp[-50:]
    assert len(rtp) == 50
    span = rtp[-1][0] - rtp[0][0]
    assert 49 * 0.02 * 0.8 < span < 49 * 0.02 * 1.2
    gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(rtp))
    assert 0.015 < gaps[len(gaps) // 2] < 0.025  # median
    assert gaps[-1] < 0.15  # this process also runs three clients: a stall is caught up
    assert all((b[2] - a[2]) & 0xFFFFFFFF == FRAME for a, b in itertools.pairwise(rtp))


async def test_renegotiation_of_the_same_pc_is_answered(bridge, clients):
    await unmute_all(bridge)
    alice = clients["alice"]
    pc_before = bridge.peer_connection("alice")
    await alice.connect(bridge)  # a new offer on the same client PC
    assert bridge.peer_connection("alice") is pc_before
    await hears(alice, present={"bob", "carol"}, absent={"alice"})
    await hears(clients["bob"], present={"alice", "carol"}, absent={"bob"})


async def test_a_new_client_pc_replaces_the_old_one(bridge, clients):
    await unmute_all(bridge)
    old = clients["alice"]
    await old.close()
    new = clients["alice"] = Client("alice", TONES["alice"])
    await new.connect(bridge)
    await hears(new, present={"bob", "carol"}, absent={"alice"})
    await hears(clients["bob"], present={"alice", "carol"}, absent={"bob"})


async def test_a_closed_client_pc_leaves_the_mix(bridge, clients):
    await unmute_all(bridge)
    await hears(clients["bob"], present={"alice", "carol"}, absent={"bob"})
    await clients["alice"].close()
    await hears(clients["bob"], present={"carol"}, absent={"alice", "bob"})

    async def forgotten() -> None:
        while bridge.peer_connection("alice") is not None:
            await asyncio.sleep(0.05)

    await bounded(forgotten(), 10)  # the server PC saw the close and left the mix
    assert bridge.member("alice").output is None
    assert bridge.is_enabled("alice")  # he may come back with a new offer, still unmuted


async def test_garbage_and_audioless_offers_are_400(bridge):
    for sdp in ("", "hello", "v=0\r\nthis is not sdp\r\n", "v=0\r\no=- x\r\nm=audio x"):
        with pytest.raises(MediaError) as err:
            await bounded(bridge.offer("dave", sdp))
        assert media_status(err.value) == 400
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        with pytest.raises(MediaError) as err:
            await bounded(bridge.offer("dave", pc.localDescription.sdp))
        assert media_status(err.value) == 400
        sdp = pc.localDescription.sdp
    finally:
        await pc.close()
    # an audio offer without Opus
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        t = pc.addTransceiver("audio", direction="sendrecv")
        from aiortc.rtcrtpsender import RTCRtpSender

        t.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/PCMU"]
        )
        await pc.setLocalDescription(await pc.createOffer())
        with pytest.raises(MediaError) as err:
            await bounded(bridge.offer("dave", pc.localDescription.sdp))
        assert media_status(err.value) == 400
    finally:
        await pc.close()
    assert sdp
    # the bridge still works afterwards
    client = Client("erin", 440.0)
    try:
        await client.connect(bridge)
        await asyncio.sleep(0.5)
        assert client.frames > 5
    finally:
        await client.close()


async def test_garbage_rtp_does_not_break_the_bridge(bridge, clients):
    await unmute_all(bridge)
    member = bridge.member("alice")
    pt = member.input.payload_type
    junk_packets = (
        b"",
        b"\x80",
        bytes(12),
        b"\x80" + bytes([pt]) + b"\x00\x01" + bytes(8) + b"\xff" * 40,  # not Opus
        b"\x90" + bytes([pt]) + bytes(10) + b"\xbe\xde\xff\xff",  # extension overruns
        b"\xa0" + bytes([pt]) + bytes(10),  # padding bit, no room
    )
    for junk in junk_packets:
        member.input.on_rtp(junk)
    await hears(clients["bob"], present={"alice", "carol"}, absent={"bob"})


async def test_close_closes_every_pc(bridge, clients):
    pcs = [bridge.peer_connection(u) for u in bridge.participants()]
    offer = await clients["alice"].offer()
    await bounded(bridge.close())
    assert all(pc.connectionState == "closed" for pc in pcs)
    with pytest.raises(MediaError):
        await bridge.offer("alice", offer)
    bridge.set_enabled("alice", True)  # ignored once closed
    await bounded(bridge.close())  # again: a no-op


async def test_sender_reports_carry_what_the_mix_sent(bridge, clients):
    from aiortc.rtp import RtcpSrPacket

    reports: list = []
    receiver = clients["bob"].pc.getTransceivers()[0].receiver
    aiortc_hooks.hook_receiver_rtcp(
        receiver, lambda packet: reports.append(packet) if isinstance(packet, RtcpSrPacket) else None
    )

    async def two_reports() -> None:
        while len(reports) < 2:
            await asyncio.sleep(0.05)

    await bounded(two_reports(), 6)
    first, second = reports[0].sender_info, reports[1].sender_info
    assert 0 < first.packet_count < second.packet_count
    assert first.octet_count > 0
    # the RTP clock advances 48 kHz against the NTP clock
    ntp_seconds = (second.ntp_timestamp - first.ntp_timestamp) / 2**32
    rtp_seconds = ((second.rtp_timestamp - first.rtp_timestamp) & 0xFFFFFFFF) / 48000
    assert abs(ntp_seconds - rtp_seconds) < 0.03
