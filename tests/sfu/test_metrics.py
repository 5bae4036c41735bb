"""The media plane's Prometheus metrics move with what really flows."""

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from sfu.api import ProducerStateChanged
from sfu.metrics import MediaCollector

from .clients import Publisher, Subscriber, bounded
from .helpers import MEETING, media_stats, ref, subscribe


def _scrape(report) -> dict[str, float]:
    """Samples by name, summed over the labels not given: {'name{kind="video"}': value}."""
    registry = CollectorRegistry()
    registry.register(MediaCollector(lambda: report))
    out: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            sample, value = line.rsplit(" ", 1)
            name, _, labels = sample.partition("{")
            kept = ",".join(x for x in labels.rstrip("}").split(",") if x and not x.startswith("worker="))
            key = f"{name}{{{kept}}}" if kept else name
            out[key] = out.get(key, 0.0) + float(value)
    return out


async def test_forwarding_moves_media_metrics(media, events):
    service = media
    pub = Publisher()
    sub = Subscriber()
    try:
        await bounded(pub.publish(service, MEETING, "alice"))
        await events.wait(ProducerStateChanged, user_id="alice", kind="video", active=True)
        (stream,) = await subscribe(service, sub, "bob", [ref("alice")])
        await sub.wait_frames(stream.mid, 20)
        # aiortc receivers send a report every 0.5-1.5 s with LSR once they saw a sender report
        for _ in range(80):
            stats = await media_stats(service)
            if stats.rtt_seconds.count >= 1 and stats.jitter_seconds.count >= 1:
                break
            await asyncio.sleep(0.1)
        m = _scrape(await service.stats_report())
        assert m['meeting_sfu_producers{kind="video"}'] == 1
        assert m['meeting_sfu_consumers{kind="video"}'] == 1
        assert m['meeting_sfu_peer_connections{state="connected"}'] == 2
        assert m['meeting_sfu_rtp_packets_total{direction="in",kind="video"}'] >= 20
        assert m['meeting_sfu_rtp_packets_total{direction="out",kind="video"}'] >= 20
        assert m['meeting_sfu_rtp_bytes_total{direction="out",kind="video"}'] > 1000
        # The new consumer asked for a keyframe, or started from the one cached (the publisher's
        # first keyframe is recent).
        assert m["meeting_sfu_keyframe_requests_total"] + m["meeting_sfu_keyframe_replays_total"] >= 1
        assert m["meeting_sfu_forwarding_latency_seconds_count"] >= 1  # one packet in LATENCY_SAMPLE
        assert 0 < m["meeting_sfu_rtt_seconds_sum"] / m["meeting_sfu_rtt_seconds_count"] < 0.5
        assert m["meeting_sfu_jitter_seconds_count"] >= 1
        assert m['meeting_sfu_rtp_packets_lost_total{kind="video"}'] == 0  # loopback loses nothing
    finally:
        await sub.close()
        await pub.close()


def test_summing_snapshots_never_writes_into_the_process_counters():
    """The shared UDP sockets' drop counters are one process-wide dict: summing workers'
    snapshots for /metrics must not add into it (it did once)."""
    from sfu.metrics import UDP_DATAGRAMS_DROPPED, MediaStats

    before = dict(UDP_DATAGRAMS_DROPPED)
    snap = MediaStats().snapshot()
    snap["udp_datagrams_dropped"] = {reason: 5 for reason in before}
    total = MediaStats.merged([snap, snap])
    assert total.udp_datagrams_dropped == {reason: 10 for reason in before}
    assert UDP_DATAGRAMS_DROPPED == before
