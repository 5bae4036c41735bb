"""The audio mixer without peer connections: levels, talking hysteresis, the bounded input buffer,
and one encode per distinct mix (real Opus in and out; RTP handed to a list instead of a socket).
"""

from __future__ import annotations

import itertools
import struct

import numpy as np

from sfu.audio import AudioSettings
from sfu.audio.codec import FRAME_SAMPLES, OpusDecoder, OpusEncoder
from sfu.audio.level import SILENT, TalkingDetector, audio_level_extension, level_of
from sfu.audio.mixer import Mixer, MixInput, MixOutput

PT = 111
RATE = 48000


def tone(freq: float, amplitude: float, n: int = 0) -> np.ndarray:
    t = (np.arange(FRAME_SAMPLES) + n * FRAME_SAMPLES) / RATE
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def rtp(payload: bytes, seq: int, ssrc: int = 1234, ext: bytes = b"") -> bytes:
    b0 = 0x90 if ext else 0x80
    return struct.pack("!BBHII", b0, PT, seq, seq * 960, ssrc) + ext + payload


def amplitude_at(samples: np.ndarray, freq: float) -> float:
    x = samples.astype(np.float64) / 32767
    window = np.hanning(x.size)
    power = np.abs(np.fft.rfft(x * window)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / RATE)
    band = (freqs > freq - 30) & (freqs < freq + 30)
    return float(np.sqrt(np.sum(power[band]) * 4.0 / (x.size * np.sum(window**2))))


def test_levels_follow_rfc_6465():
    assert level_of(np.zeros(960, np.int16)) == SILENT
    assert level_of(tone(1000, 1.0)) == 3  # a full-scale sine is -3 dBov
    assert level_of(tone(1000, 0.01)) == 43
    assert level_of(np.full(960, -32768, np.int16)) == 0


def test_audio_level_extension_one_and_two_byte_forms():
    one = b"\xbe\xde\x00\x01" + bytes([0x10, 0x80 | 33, 0, 0])  # id 1, V bit set, level 33
    assert audio_level_extension(rtp(b"x", 1, ext=one), 1) == 33
    assert audio_level_extension(rtp(b"x", 1, ext=one), 2) == -1
    two = b"\x10\x00\x00\x01" + bytes([5, 1, 20, 0])
    assert audio_level_extension(rtp(b"x", 1, ext=two), 5) == 20
    assert audio_level_extension(rtp(b"x", 1), 1) == -1
    assert audio_level_extension(b"\x90" + bytes(15), 1) == -1
    assert audio_level_extension(rtp(b"", 1, ext=b"\xbe\xde\x00\x09"), 1) == -1  # overruns


def test_talking_needs_net_loud_frames_and_stops_after_quiet_ones():
    d = TalkingDetector(threshold=45, start_count=5, stop_count=3)
    changes = [d.update(level) for level in [30, 30, 90, 30, 30, 30]]
    assert not any(changes) and not d.talking  # one quiet frame took one back
    assert d.update(30) and d.talking
    assert not d.update(90) and not d.update(90) and not d.update(20)  # quiet run broken
    assert [d.update(SILENT) for _ in range(3)] == [False, False, True]
    assert not d.talking
    assert not d.reset()


def test_input_buffer_is_bounded_and_keeps_the_newest():
    inp = MixInput(jitter_frames=3)
    for n in range(10):
        inp.push(np.full(FRAME_SAMPLES, n, np.int16))
    assert inp.fill == 3 * FRAME_SAMPLES
    assert [int(inp.take()[0]) for _ in range(3)] == [7, 8, 9]
    assert inp.take() is None
    inp.push(np.arange(10 * FRAME_SAMPLES, dtype=np.int16))  # one 200 ms packet
    assert inp.fill == 3 * FRAME_SAMPLES
    assert int(inp.take()[0]) == 7 * FRAME_SAMPLES


def test_a_standing_frame_of_latency_is_trimmed():
    inp = MixInput(jitter_frames=4)
    inp.push(np.zeros(FRAME_SAMPLES, np.int16))
    for _ in range(250):  # one frame in, one out, with one extra frame standing
        inp.push(np.zeros(FRAME_SAMPLES, np.int16))
        inp.take()
    assert inp.fill == 0


def test_input_decodes_only_its_payload_type_and_stream_and_never_raises():
    enc = OpusEncoder()
    inp = MixInput()
    inp.configure(PT, None)
    inp.enabled = True
    payload = enc.encode(tone(440, 0.3))
    inp.on_rtp(rtp(payload, 1))
    assert inp.fill == FRAME_SAMPLES
    inp.on_rtp(rtp(payload, 1))  # duplicate
    inp.on_rtp(rtp(payload, 0))  # late
    inp.on_rtp(rtp(payload, 2, ssrc=99))  # a second stream while the first is live
    inp.on_rtp(b"\x80\x00" + bytes(20))  # another payload type
    assert inp.fill == FRAME_SAMPLES
    padding_overrun = b"\xa0" + bytes([PT]) + bytes(10)
    junk_packets = (b"", b"\x80", rtp(b"\xff\xff\xff", 3), rtp(b"", 4), padding_overrun)
    for junk in junk_packets:
        inp.on_rtp(junk)
    inp.enabled = False
    inp.on_rtp(rtp(enc.encode(tone(440, 0.3, 1)), 5))  # muted: not decoded
    assert inp.fill == FRAME_SAMPLES


class Wire:
    """Stands in for a socket: keeps what was sent (unencrypted)."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def sendto(self, data: bytes, addr: object) -> None:
        self.packets.append(data)


def build(users: list[str], settings: AudioSettings | None = None):
    talking: list[tuple[str, bool]] = []
    mixer = Mixer(settings or AudioSettings(talking_packets=2), lambda u, t: talking.append((u, t)))
    wires = {}
    for i, user in enumerate(users):
        member = mixer.add(user)
        member.input.configure(PT, None)
        mixer.set_enabled(member, True)
        wires[user] = Wire()
        member.output = MixOutput(1000 + i, PT, lambda b: b, wires[user].sendto, None)
    return mixer, wires, talking


def test_talkers_get_their_own_mix_and_everyone_else_shares_one_encode():
    users = ["a", "b", "c", "d", "e"]
    mixer, wires, talking = build(users)
    freqs = {"a": 440.0, "b": 880.0}
    encoders = {u: OpusEncoder() for u in users}
    heard: dict[str, list[np.ndarray]] = {u: [] for u in users}
    decoders = {u: OpusDecoder() for u in users}
    for n in range(40):
        for seq_user in users:
            amp = 0.3 if seq_user in freqs else 0.0
            pcm = tone(freqs.get(seq_user, 0.0), amp, n)
            mixer.members[seq_user].input.on_rtp(rtp(encoders[seq_user].encode(pcm), n + 1))
        before = mixer.encodes
        mixer.tick(n)
        if n >= 5:
            assert mixer.encodes - before == 3  # the full mix, a's and b's mix-minus
            last = {u: wires[u].packets[-1][12:] for u in users}
            assert last["c"] == last["d"] == last["e"]
            assert len({last["a"], last["b"], last["c"]}) == 3
        for u in users:
            heard[u].append(decoders[u].decode(wires[u].packets[-1][12:]))
    assert sorted(talking) == [("a", True), ("b", True)]
    mix = {u: np.concatenate(heard[u][10:]) for u in users}
    assert amplitude_at(mix["a"], 440) < 0.01 and amplitude_at(mix["a"], 880) > 0.2
    assert amplitude_at(mix["b"], 880) < 0.01 and amplitude_at(mix["b"], 440) > 0.2
    assert amplitude_at(mix["c"], 440) > 0.2 and amplitude_at(mix["c"], 880) > 0.2
    # every packet: consecutive sequence numbers, timestamps 960 apart, the SSRC of the output
    for i, u in enumerate(users):
        heads = [struct.unpack("!BBHII", p[:12]) for p in wires[u].packets]
        assert all(h[4] == 1000 + i and h[1] & 0x7F == PT for h in heads)
        assert all((b[2] - a[2]) & 0xFFFF == 1 for a, b in itertools.pairwise(heads))
        assert all((b[3] - a[3]) & 0xFFFFFFFF == 960 for a, b in itertools.pairwise(heads))


def test_loud_sums_are_clipped_not_wrapped():
    mixer, wires, _ = build(["a", "b", "c"])
    square = np.where(np.arange(FRAME_SAMPLES) % 96 < 48, 30000, -30000).astype(np.int16)
    for n in range(10):
        for user in ("a", "b"):
            mixer.members[user].input.push(square)
        mixer.tick(n)
    dec = OpusDecoder()
    out = np.concatenate([dec.decode(p[12:]) for p in wires["c"].packets])
    # wrapped int16 sums would give a +-5536 square (60000 - 65536); clipped ones stay near
    # the rails
    late = np.abs(out[4 * FRAME_SAMPLES:].astype(np.int32))
    assert np.median(late) > 20000


def test_the_tap_gets_the_full_mix_even_without_listeners():
    mixer, _wires, _ = build(["a"])
    mixer.members["a"].output = None
    got: list[tuple[bytes, int]] = []
    mixer.tap = lambda payload, ts: got.append((payload, ts))
    for n in range(3):
        mixer.tick(n + 10)
    assert [ts for _, ts in got] == [9600, 10560, 11520]

    def broken(payload: bytes, ts: int) -> None:
        raise RuntimeError("disk full")

    mixer.tap = broken
    mixer.tick(20)  # logged, tap dropped, mix goes on
    assert mixer.tap is None


def test_muted_and_silent_members_hear_the_shared_mix():
    mixer, wires, talking = build(["a", "b", "c"])
    mixer.set_enabled(mixer.members["c"], False)
    enc = OpusEncoder()
    for n in range(20):
        mixer.members["a"].input.push(tone(440, 0.3, n))
        mixer.members["c"].input.on_rtp(rtp(enc.encode(tone(880, 0.3, n)), n + 1))
        mixer.tick(n)
    assert wires["b"].packets[-1][12:] == wires["c"].packets[-1][12:]
    assert wires["a"].packets[-1][12:] != wires["b"].packets[-1][12:]
    assert talking == [("a", True)]
    mixer.set_enabled(mixer.members["a"], False)
    assert talking == [("a", True), ("a", False)]


def test_a_packet_flood_is_decoded_only_up_to_a_budget_per_tick():
    enc = OpusEncoder()
    payload = enc.encode(tone(440, 0.3))
    inp = MixInput(jitter_frames=4)
    inp.configure(PT, None)
    inp.enabled = True
    for seq in range(1, 1001):
        inp.on_rtp(rtp(payload, seq))
    assert inp.packets == 1000
    assert inp.dropped >= 1000 - inp.budget_per_tick
    inp.take()
    inp.on_rtp(rtp(payload, 1001))  # the next tick brings a fresh budget
    assert inp.budget == inp.budget_per_tick - 1
