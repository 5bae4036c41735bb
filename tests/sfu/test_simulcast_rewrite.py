"""A simulcast producer forwarding one layer per subscriber, on synthetic packets (no network):
one SSRC, continuous sequence numbers, timestamps, VP8 picture id and TL0PICIDX across layer
switches, switching only on a keyframe of the target layer, RTX per layer, loss around a switch,
a layer that stops."""

import struct

import pytest

from sfu import vp8
from sfu.aiortc_hooks import SendPath
from sfu.consumer import SendParameters, StreamState
from sfu.metrics import MediaStats
from sfu.producer import CodecChoice
from sfu.rtp import read_extension
from sfu.simulcast import LAYER_ACTIVE_SECONDS, SimulcastConsumer, SimulcastProducer
from sfu.simulcast_sdp import SimulcastOffer

from .synthetic_rtp import REPAIRED_RID_EXT, RID_EXT, parse_out, rtp, rtx, vp8_payload

PT, RTX_PT, OUT_PT, OUT_SSRC = 96, 97, 120, 0xABCDEF
SIZES = {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}
SSRCS = {"q": 1111, "h": 2222, "f": 3333}
RTX_SSRCS = {"q": 4111, "h": 4222, "f": 4333}
TS_BASE = {"q": 1_000_000, "h": 50_000_000, "f": 3_000_000_000}  # independent timestamp bases
PID_BASE = {"q": 100, "h": 20_000, "f": 32_700}  # f wraps past 0x7FFF
TL0_BASE = {"q": 10, "h": 200, "f": 250}


class Publisher:
    """Sends frames of each layer: two packets per frame, 3000 ticks apart (30 fps)."""

    def __init__(self, producer):
        self.producer = producer
        self.seq = {rid: 1000 * (i + 1) for i, rid in enumerate(SIZES)}
        self.frame = dict.fromkeys(SIZES, 0)
        self.rtx_seq = dict.fromkeys(SIZES, 0)
        self.sent = {rid: [] for rid in SIZES}

    def frame_packets(self, rid, keyframe=False, frame=None):
        n = self.frame[rid] if frame is None else frame
        ts = TS_BASE[rid] + n * 3000
        pid = (PID_BASE[rid] + n) & 0x7FFF
        tl0 = (TL0_BASE[rid] + n) & 0xFF
        first = vp8_payload(pid, tl0, keyframe=keyframe, size=SIZES[rid])
        second = vp8_payload(pid, tl0, start=False)
        out = []
        for i, payload in enumerate((first, second)):
            out.append(rtp(PT, self.seq[rid], ts, SSRCS[rid], payload, marker=i == 1, rid=rid))
            self.seq[rid] = (self.seq[rid] + 1) & 0xFFFF
        self.frame[rid] = n + 1
        return out

    def send(self, rid, keyframe=False, drop=()):
        packets = self.frame_packets(rid, keyframe)
        for i, packet in enumerate(packets):
            if i not in drop:
                self.producer.on_rtp(packet)
        self.sent[rid].extend(packets)
        return packets

    def tick(self, keyframes=(), only=None):
        """One frame of every layer (or of `only`)."""
        for rid in only or SIZES:
            self.send(rid, keyframe=rid in keyframes)


def make_producer(stats=None):
    codec = CodecChoice("video/VP8", 90000, PT, RTX_PT, ())
    offer = SimulcastOffer("0", ("q", "h", "f"), "q;h;f", RID_EXT, REPAIRED_RID_EXT)
    return SimulcastProducer(
        "m", "pub", "video", codec, [], on_active=lambda p: None, on_peer_lost=lambda p: None,
        stats=stats or MediaStats(), offer=offer,
    )


def make_consumer(producer, replays=False):
    """A bound, answered consumer; by default it waits for a live keyframe (the tests of the
    catch-up from the ring ask for it)."""
    out = []
    consumer = SimulcastConsumer(producer, "sub", StreamState())
    consumer.replays = replays
    consumer.bind(SendParameters(
        pt=OUT_PT, rtx_pt=None, ssrc=OUT_SSRC, rtx_ssrc=0, ext_before=b"", ext_after=b"", has_abs=False,
        path=SendPath(lambda b: b, lambda b, addr: out.append(parse_out(b)), None),
    ))
    consumer.resume()
    producer.add_consumer(consumer)
    return consumer, out


def layer(producer, rid):
    return producer.layers[rid]


def check_continuous(out):
    """One SSRC; sequence +1 per packet (or +2 after an unfinished frame, i.e. no marker);
    timestamps never go back; picture id +1 per frame; TL0PICIDX +1 per frame (all tid 0)."""
    assert {p["ssrc"] for p in out} == {OUT_SSRC}
    assert {p["pt"] for p in out} == {OUT_PT}
    for a, b in zip(out, out[1:], strict=False):
        step = (b["seq"] - a["seq"]) & 0xFFFF
        assert step == 1 or (step == 2 and not a["marker"]), (a, b)
        dts = (b["ts"] - a["ts"]) & 0xFFFFFFFF
        assert dts < 0x80000000, (a, b)
        da, db = vp8.parse(a["payload"]), vp8.parse(b["payload"])
        assert da.pid_bits == db.pid_bits == 15
        if dts:
            assert (db.picture_id - da.picture_id) & 0x7FFF == 1, (da, db)
            assert (db.tl0 - da.tl0) & 0xFF == 1
        else:
            assert db.picture_id == da.picture_id


async def test_rid_extensions_bind_ssrcs_and_rank_layers_by_resolution():
    p = make_producer()
    pub = Publisher(p)
    # ranked by resolution whatever the names: send the big one first
    for rid in ("f", "q", "h"):
        pub.send(rid, keyframe=True)
    assert {layer(p, r).ssrc for r in SIZES} == set(SSRCS.values())
    assert [x.rid for x in p.ranked] == ["q", "h", "f"]
    assert read_extension(pub.sent["q"][0], RID_EXT) == b"q"
    # a packet from an SSRC without a rid extension binds nothing
    p.on_rtp(rtp(PT, 1, 1, 9999, vp8_payload(1, 1)))
    assert 9999 not in p.by_ssrc


async def test_start_on_a_keyframe_then_switch_up_and_down_continuously():
    stats = MediaStats()
    p = make_producer(stats)
    pub = Publisher(p)
    pub.tick(keyframes=SIZES)  # layers known and ranked
    c, out = make_consumer(p)
    assert c.target is layer(p, "q")  # nothing known of the link yet: the lowest layer
    pub.tick()  # no keyframe yet: nothing sent
    assert out == []
    pub.tick(keyframes=("q",))
    pub.tick()
    assert len(out) == 4 and c.current is layer(p, "q")
    c.set_target(layer(p, "f"))
    pub.tick()  # f without keyframe: q goes on
    assert c.current is layer(p, "q")
    pub.tick(keyframes=("f",))
    assert c.current is layer(p, "f")
    for _ in range(3):
        pub.tick()
    c.set_target(layer(p, "h"))
    pub.tick(keyframes=("h",))
    pub.tick()
    assert c.current is layer(p, "h")
    check_continuous(out)
    sizes = [(d.width, d.height) for d in (vp8.parse(x["payload"]) for x in out) if d.keyframe]
    assert sizes == [(320, 180), (1280, 720), (640, 360)]
    assert c.switches == 2 and stats.layer_switches == 2
    assert stats.layer_packets_in["0"] > 0 and stats.layer_packets_in["2"] > 0


async def test_timestamps_aligned_through_sender_reports():
    p = make_producer()
    pub = Publisher(p)
    pub.tick(keyframes=SIZES)
    c, out = make_consumer(p)
    pub.tick(keyframes=("q",))
    # The SRs say h's frame k was captured with q's frame k+1 (h runs one frame late), one
    # second after the NTP instant of the reports.
    n = pub.frame["q"]
    ntp = 0x1234_5678_0000_0000
    layer(p, "q").sr = (ntp, TS_BASE["q"] + (n + 1) * 3000 - 90000, 0.0)
    layer(p, "h").sr = (ntp, TS_BASE["h"] + n * 3000 - 90000, 0.0)
    c.set_target(layer(p, "h"))
    pub.tick()  # q frame n (h frame n not forwarded)
    last_q = out[-1]["ts"]
    pub.tick(keyframes=("h",), only=("h",))  # h frame n+1: taken at q's frame n+2
    first_h = out[-2]
    assert vp8.parse(first_h["payload"]).keyframe
    assert (first_h["ts"] - last_q) & 0xFFFFFFFF == 6000  # not the one-frame fallback
    check_continuous(out)


async def test_without_sender_reports_a_switch_advances_one_frame():
    p = make_producer()
    pub = Publisher(p)
    pub.tick(keyframes=SIZES)
    c, out = make_consumer(p)
    pub.tick(keyframes=("q",))
    c.set_target(layer(p, "f"))
    pub.tick(keyframes=("f",), only=("q", "f"))
    switch = next(i for i, x in enumerate(out) if i and vp8.parse(x["payload"]).keyframe)
    assert (out[switch]["ts"] - out[switch - 1]["ts"]) & 0xFFFFFFFF == 3000
    check_continuous(out)


async def test_loss_around_a_switch():
    p = make_producer()
    pub = Publisher(p)
    pub.tick(keyframes=SIZES)
    c, out = make_consumer(p)
    pub.tick(keyframes=("q",))
    c.set_target(layer(p, "h"))
    pub.send("q", drop=(1,))  # the last packet of q's frame is lost: no marker sent
    late = pub.sent["h"][-1]  # an h packet from before the keyframe, arriving late
    h_key = pub.frame_packets("h", keyframe=True)
    p.on_rtp(h_key[0])
    p.on_rtp(late)  # older than the keyframe we switched on: never forwarded
    p.on_rtp(h_key[1])
    pub.send("h", drop=(0,))  # a loss on the new layer stays a gap for the subscriber to NACK
    pub.send("h")
    seqs = [x["seq"] for x in out]
    i = next(i for i, x in enumerate(out) if i and vp8.parse(x["payload"]).keyframe)
    assert (seqs[i] - seqs[i - 1]) & 0xFFFF == 2  # the unfinished q frame reads as a loss
    assert len(out) == 2 + 1 + 2 + 1 + 2
    assert (seqs[-3] - seqs[-4]) & 0xFFFF == 2
    # the subscriber's NACK for the gap is answered from the history, as sent
    assert c.retransmit([(seqs[-4] + 1) & 0xFFFF]) == 0  # never sent: nothing to resend
    assert c.retransmit([seqs[-1]]) == 1


async def test_rtx_is_unwrapped_per_layer():
    p = make_producer()
    pub = Publisher(p)
    pub.tick(keyframes=SIZES)
    c, out = make_consumer(p)
    pub.tick(keyframes=("q",))
    packets = pub.send("q", drop=(1,))
    lost = packets[1]
    original_seq = struct.unpack_from("!H", lost, 2)[0]
    payload = lost[12 + 4 + 4:]  # after the header and its one-word rid extension
    p.on_rtp(rtx(RTX_PT, 7, struct.unpack_from("!I", lost, 4)[0], RTX_SSRCS["q"], original_seq, payload,
                 repaired="q", marker=True))
    assert layer(p, "q").rtx_ssrc == RTX_SSRCS["q"]
    assert out[-1]["marker"] and (out[-1]["seq"] - out[-2]["seq"]) & 0xFFFF == 1
    # a padding-only probe on the RTX SSRC forwards nothing
    n = len(out)
    p.on_rtp(rtp(RTX_PT, 8, 0, RTX_SSRCS["q"], b"", padding=200))
    assert len(out) == n


async def test_a_layer_that_stops_leaves_the_ranking_and_the_subscriber_moves_down():
    p = make_producer()
    pub = Publisher(p)
    pub.tick(keyframes=SIZES)
    c, out = make_consumer(p)
    c.set_target(layer(p, "f"))
    pub.tick(keyframes=("f",))
    pub.tick()
    assert c.current is layer(p, "f")
    # f stops; later the ranking (re-made as packets of the others arrive) no longer has it
    layer(p, "f").last_packet -= LAYER_ACTIVE_SECONDS + 1
    p._rank(layer(p, "q").last_packet)
    assert [x.rid for x in p.ranked] == ["q", "h"]
    c.set_target(p.ranked[-1])
    pub.tick(keyframes=("h",), only=("q", "h"))
    pub.tick(only=("q", "h"))
    assert c.current is layer(p, "h")
    check_continuous(out)


@pytest.mark.parametrize("pid_bits", [7, 15])
async def test_seven_bit_publishers_get_fifteen_bit_picture_ids(pid_bits):
    p = make_producer()
    c, out = make_consumer(p)
    c.set_target(layer(p, "q"))
    for n in range(200):
        key = n == 0
        payload = vp8_payload(n & (0x7F if pid_bits == 7 else 0x7FFF), n & 0xFF, keyframe=key, pid_bits=pid_bits)
        p.on_rtp(rtp(PT, n, n * 3000, SSRCS["q"], payload, marker=True, rid="q"))
        if key:
            c.set_target(layer(p, "q"))
    pids = [vp8.parse(x["payload"]).picture_id for x in out]
    assert pids == [(pids[0] + i) & 0x7FFF for i in range(len(pids))]


async def test_the_recorder_gets_the_highest_layer_as_one_stream():
    p = make_producer()
    taps = []
    p._taps.append(lambda pid, kind, mime, pt, clock, data: taps.append(parse_out(data)))
    pub = Publisher(p)
    pub.tick(keyframes=("q", "h"), only=("q", "h"))  # f not sent yet: h is the highest
    pub.tick(only=("q", "h"))
    n = len(taps)
    pub.tick(only=("q", "h"))
    assert len(taps) == n + 2  # one layer only: h's two packets per frame
    pub.tick(keyframes=("f",))  # f appears: the recording moves up on its keyframe
    pub.tick()
    widths = [vp8.parse(x["payload"]).width for x in taps if vp8.parse(x["payload"]).keyframe]
    assert widths[-2:] == [640, 1280]  # (q's first keyframe came before h was known)
    assert len({x["ssrc"] for x in taps}) == 1
    seqs = [x["seq"] for x in taps]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))


async def test_simulcast_metrics_are_exposed():
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from sfu.api import StatsReport
    from sfu.metrics import MediaCollector

    stats = MediaStats()
    p = make_producer(stats)
    pub = Publisher(p)
    pub.tick(keyframes=SIZES)
    c, _ = make_consumer(p)
    pub.tick(keyframes=("q",))
    c.set_target(layer(p, "h"))
    pub.tick(keyframes=("h",))
    stats.subscriber_estimate_bps.observe(700_000)
    registry = CollectorRegistry()
    registry.register(MediaCollector(lambda: StatsReport(workers={"0": stats.snapshot()})))
    text = generate_latest(registry).decode()
    assert stats.layer_packets_in["2"] > 0
    for rank, n in stats.layer_packets_in.items():
        assert f'meeting_sfu_simulcast_packets_in_total{{layer="{rank}"}} {float(n)}' in text
    assert "meeting_sfu_simulcast_layer_switches_total 1.0" in text
    assert 'meeting_sfu_subscriber_estimate_bits_per_second_bucket{le="1000000"} 1.0' in text


async def test_h264_layers_switch_on_an_idr_with_continuous_sequence_and_timestamps():
    from .synthetic_rtp import h264_payload

    codec = CodecChoice("video/H264", 90000, PT, RTX_PT, (("packetization-mode", 1),))
    offer = SimulcastOffer("0", ("q", "h"), "q;h", RID_EXT, REPAIRED_RID_EXT)
    p = SimulcastProducer("m", "pub", "video", codec, [], on_active=lambda p: None,
                          on_peer_lost=lambda p: None, offer=offer)
    c, out = make_consumer(p)
    seq = {"q": 100, "h": 40000}

    def frame(rid, n, key):
        first = h264_payload("stap-sps") if key else h264_payload("non-idr")
        for i, payload in enumerate((first, h264_payload("fu-idr-middle"))):
            p.on_rtp(rtp(PT, seq[rid], TS_BASE[rid] + n * 3000, SSRCS[rid], payload, marker=i == 1, rid=rid))
            seq[rid] += 1

    for n in range(3):
        frame("q", n, n == 0)
        frame("h", n, False)
    c.set_target(layer(p, "q"))
    frame("q", 3, True)
    frame("q", 4, False)
    c.set_target(layer(p, "h"))
    frame("h", 4, False)  # not an IDR: q goes on
    frame("q", 5, False)
    frame("h", 5, True)
    frame("h", 6, False)
    assert c.current is layer(p, "h") and c.switches == 1
    assert len(out) == 2 * 5
    assert {x["ssrc"] for x in out} == {OUT_SSRC}
    assert all((b["seq"] - a["seq"]) & 0xFFFF == 1 for a, b in zip(out, out[1:], strict=False))
    ts = [x["ts"] for x in out]
    assert all(0 <= (b - a) & 0xFFFFFFFF <= 3000 for a, b in zip(ts, ts[1:], strict=False))
    assert out[6]["payload"] == h264_payload("stap-sps")  # payload untouched


async def test_a_long_run_on_one_layer_is_never_cut():
    # 40,000 packets after the switch: the sequence numbers wrap past the keyframe's half-way
    # point, which must not read as "older than the keyframe".
    p = make_producer()
    c, out = make_consumer(p)
    c.set_target(layer(p, "q"))
    payload = vp8_payload(1, 1, keyframe=True)
    p.on_rtp(rtp(PT, 0, 0, SSRCS["q"], payload, marker=True, rid="q"))
    plain = vp8_payload(2, 2)
    for n in range(1, 40_000):
        p.on_rtp(rtp(PT, n, n * 3000, SSRCS["q"], plain, marker=True))
    assert len(out) == 40_000


async def test_layers_rank_by_bitrate_until_every_resolution_is_known():
    p = make_producer()
    pub = Publisher(p)
    pub.send("f")  # no keyframe: resolution unknown
    pub.send("q", keyframe=True)
    for rid, rate in (("q", 900_000), ("f", 100_000)):
        layer(p, rid).bitrate = rate
    p._rank(layer(p, "q").last_packet)
    assert [x.rid for x in p.ranked] == ["f", "q"]  # by bitrate: f's size is not known yet
    pub.send("f", keyframe=True)
    assert [x.rid for x in p.ranked] == ["q", "f"]  # by resolution once both are known


async def test_a_new_subscriber_starts_from_the_cached_keyframe_and_every_packet_is_retransmitted_as_sent():
    """Caught up from the lowest layer's ring, then switched up and down: one continuous
    stream, and a NACK of any packet of it (before or after a switch) is rewritten again from
    the layer rings byte for byte. The recording, started meanwhile, begins at a live keyframe."""
    p = make_producer()
    taps = []
    pub = Publisher(p)
    pub.tick(keyframes=SIZES)
    pub.tick()
    raw = []
    c = SimulcastConsumer(p, "sub", StreamState())
    c.bind(SendParameters(
        pt=OUT_PT, rtx_pt=None, ssrc=OUT_SSRC, rtx_ssrc=0, ext_before=b"", ext_after=b"", has_abs=False,
        path=SendPath(lambda b: b, lambda b, addr: raw.append(b), None),
    ))
    p.add_consumer(c)
    c.resume()
    assert c.current is layer(p, "q") and c.replayed == 4  # q's keyframe frame and the next
    assert vp8.parse(parse_out(raw[0])["payload"]).keyframe
    p._taps.append(lambda pid, kind, mime, pt, clock, data: taps.append(parse_out(data)))
    pub.tick()
    assert taps == []  # the recorder waits for a live keyframe of its layer
    c.set_target(layer(p, "f"))
    pub.tick(keyframes=("f",))
    pub.tick()
    c.set_target(layer(p, "h"))
    pub.tick(keyframes=("h",))
    pub.tick()
    assert c.current is layer(p, "h") and c.switches == 2
    out = [parse_out(x) for x in raw]
    check_continuous(out)
    assert taps and vp8.parse(taps[0]["payload"]).keyframe
    for packet, sent in zip(out, raw, strict=True):
        assert c.rebuild(packet["seq"]) == sent
    # Retransmitted as sent, counted, within the budget.
    before = len(raw)
    assert c.retransmit([out[0]["seq"], out[5]["seq"], out[-1]["seq"]]) == 3
    assert raw[before:] == [raw[0], raw[5], raw[before - 1]]
    assert c.retransmitted == 3
    assert c.rebuild((out[0]["seq"] - 1) & 0xFFFF) is None  # never sent
