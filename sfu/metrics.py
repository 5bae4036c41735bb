"""Media-plane statistics: plain counters on the hot path, turned into Prometheus metrics on scrape.

Per-packet code only adds to ints in `MediaStats` (no locks, no label lookups); a collector reads
them when /metrics is scraped. Labels stay bounded: kind, direction, state, never a user or a
meeting.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .api import StatsReport

KINDS = ("video", "screen", "audio")
LAYERS = ("0", "1", "2")  # simulcast layer ranks
PC_STATES = ("new", "connecting", "connected", "disconnected", "failed", "closed")
# Why the shared UDP sockets (sfu.udp_mux) dropped a datagram instead of handing it to ICE.
UDP_DROP_REASONS = (
    "empty",  # zero bytes
    "malformed",  # truncated or garbled STUN, or a first byte outside the RFC 7983 ranges
    "too_long",  # SRTP/SRTCP longer than the SRTP library accepts (1,500 bytes)
    "unknown_ufrag",  # a STUN request naming no connection of this process
    "unknown_address",  # anything else from an address no connection has verified or checked
)
# The process has one set of shared sockets, so one set of counters; every MediaStats of the
# process shows it (plain ints, like the rest).
UDP_DATAGRAMS_DROPPED: dict[str, int] = dict.fromkeys(UDP_DROP_REASONS, 0)


class Histogram:
    """A fixed-bucket histogram of seconds, cheap enough to observe on hot paths."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            buckets.append((repr(bound), acc))
        buckets.append(("+Inf", self.count))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


def _per_kind() -> dict[str, int]:
    return dict.fromkeys(KINDS, 0)


class MediaStats:
    """Everything the media plane counts. One instance per media service."""

    def __init__(self) -> None:
        self.peer_connections: dict[str, int] = dict.fromkeys(PC_STATES, 0)  # current, by state
        self.producers: dict[str, int] = _per_kind()  # current
        self.consumers: dict[str, int] = _per_kind()  # current
        self.rtp_packets_in = _per_kind()
        self.rtp_bytes_in = _per_kind()
        self.rtp_packets_out = _per_kind()
        self.rtp_bytes_out = _per_kind()
        self.packets_lost = _per_kind()  # seen as sequence gaps on publishers' streams
        self.nacks_received = 0  # NACK feedback from subscribers (packets asked for)
        self.retransmissions = 0  # packets resent (rewritten again from the producer's ring)
        self.retransmissions_refused = 0  # asked for again beyond a consumer's budget
        self.plis_received = 0
        self.firs_received = 0
        self.keyframe_requests_sent = 0  # PLIs sent to publishers (after throttling)
        self.keyframe_replays = 0  # consumers started from a producer's cached keyframe instead
        self.replayed_packets = 0  # packets sent from a producer's ring to catch a consumer up
        self.recorder_bytes = 0
        self.udp_datagrams_dropped = UDP_DATAGRAMS_DROPPED  # by reason, see UDP_DROP_REASONS
        self.recorder_dropped = 0  # packets and mix frames not recorded: the disk was behind
        self.send_errors = 0  # forwarded copies the fast path could not protect or send (dropped)
        self.rtt_seconds = Histogram((0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0))
        self.jitter_seconds = Histogram((0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1))
        self.forwarding_seconds = Histogram(
            (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01)
        )
        self.mixer_tick_seconds = Histogram(
            (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
        )
        self.loop_lag_seconds = Histogram((0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
        # simulcast (DESIGN §6.1): layers by rank, lowest "0"
        self.layer_switches = 0  # a subscriber moved to another layer (on its keyframe)
        self.layer_packets_in: dict[str, int] = dict.fromkeys(LAYERS, 0)
        self.padding_packets_out = 0  # padding probes towards subscribers held on a lower layer
        self.subscriber_estimate_bps = Histogram(
            (100_000, 250_000, 500_000, 1_000_000, 2_000_000, 4_000_000, 8_000_000)
        )

    def pc_state_changed(self, old: str | None, new: str | None) -> None:
        if old in self.peer_connections:
            self.peer_connections[old] -= 1
        if new in self.peer_connections:
            self.peer_connections[new] += 1

    # --- plain data, for the control plane (stats cross the worker boundary as snapshots) -----

    def snapshot(self) -> dict[str, Any]:
        """Every counter, gauge and histogram as plain data (ints, dicts of ints, histograms as
        {"counts", "total", "count"})."""
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, Histogram):
                out[name] = {"counts": list(value.counts), "total": value.total, "count": value.count}
            elif isinstance(value, dict):
                out[name] = dict(value)
            elif isinstance(value, int | float):
                out[name] = value
        return out

    @classmethod
    def merged(cls, snapshots: Iterable[dict[str, Any]]) -> MediaStats:
        """The sum of several snapshots (workers' counters, the retired ones included), as a
        MediaStats that collectors read like a live one. Unknown names are ignored."""
        total = cls()
        for name, value in vars(total).items():  # never add into a process-wide dict
            if isinstance(value, dict):
                setattr(total, name, dict.fromkeys(value, 0))
        for snap in snapshots:
            for name, value in snap.items():
                current = getattr(total, name, None)
                if isinstance(current, Histogram) and isinstance(value, dict):
                    counts = value.get("counts") or []
                    if len(counts) == len(current.counts):
                        current.counts = [a + b for a, b in zip(current.counts, counts, strict=True)]
                        current.total += value.get("total", 0.0)
                        current.count += value.get("count", 0)
                elif isinstance(current, dict) and isinstance(value, dict):
                    for key, n in value.items():
                        if isinstance(n, int | float):
                            current[key] = current.get(key, 0) + n
                elif isinstance(current, int | float) and isinstance(value, int | float):
                    setattr(total, name, current + value)
        return total


def retire(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What of a dead worker's last snapshot is kept in the node's sums: the counters and
    histograms, not the gauges (its PCs, producers and consumers are gone)."""
    return {k: v for k, v in snapshot.items() if k not in GAUGES}


# Current values (a worker's own; exposed per worker), not summed into the node's counters.
GAUGES = frozenset({"peer_connections", "producers", "consumers", "live"})


class MediaCollector(Collector):
    """Exposes the media plane's counters as meeting_sfu_* metrics: counters summed over the
    workers (those of dead workers included), gauges per worker with the label `worker`."""

    def __init__(self, report: Callable[[], StatsReport | None]) -> None:
        self.report = report

    def collect(self) -> Iterator:
        report = self.report() or StatsReport(workers={})
        workers = sorted(report.workers.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0)
        views = [(label, MediaStats.merged([snap])) for label, snap in workers]
        s = MediaStats.merged([*(snap for _, snap in workers), *([report.retired] if report.retired else [])])
        pcs = GaugeMetricFamily(
            "meeting_sfu_peer_connections", "Server peer connections by state", labels=["state", "worker"]
        )
        for label, view in views:
            for state, n in view.peer_connections.items():
                pcs.add_metric([state, label], n)
        yield pcs
        for name, doc, attr in (
            ("meeting_sfu_producers", "Incoming media streams by kind", "producers"),
            ("meeting_sfu_consumers", "Forwarded streams (one per subscriber) by kind", "consumers"),
        ):
            g = GaugeMetricFamily(name, doc, labels=["kind", "worker"])
            for label, view in views:
                for kind, n in getattr(view, attr).items():
                    g.add_metric([kind, label], n)
            yield g
        meetings = GaugeMetricFamily(
            "meeting_sfu_worker_meetings", "Meetings whose media a worker holds", labels=["worker"]
        )
        for label, snap in workers:
            meetings.add_metric([label], (snap.get("live") or {}).get("meetings", 0))
        yield meetings
        yield GaugeMetricFamily("meeting_sfu_workers", "Media worker processes running", value=len(workers))
        yield CounterMetricFamily(
            "meeting_sfu_worker_restarts", "Media workers restarted after they died", value=report.restarts
        )
        for name, doc, inbound, outbound in (
            ("meeting_sfu_rtp_packets", "RTP packets", s.rtp_packets_in, s.rtp_packets_out),
            ("meeting_sfu_rtp_bytes", "RTP bytes", s.rtp_bytes_in, s.rtp_bytes_out),
        ):
            c = CounterMetricFamily(name, doc + " by kind and direction", labels=["kind", "direction"])
            for kind in KINDS:
                c.add_metric([kind, "in"], inbound[kind])
                c.add_metric([kind, "out"], outbound[kind])
            yield c
        lost = CounterMetricFamily(
            "meeting_sfu_rtp_packets_lost", "Packets missing on incoming streams", labels=["kind"]
        )
        for kind in KINDS:
            lost.add_metric([kind], s.packets_lost[kind])
        yield lost
        for name, doc, value in (
            ("meeting_sfu_nacks_received", "Packets asked for again by subscribers (NACK)", s.nacks_received),
            ("meeting_sfu_retransmissions", "Packets resent to subscribers from history", s.retransmissions),
            (
                "meeting_sfu_retransmissions_refused",
                "NACKed packets not resent: over the consumer's retransmission budget",
                s.retransmissions_refused,
            ),
            ("meeting_sfu_plis_received", "Picture loss indications from subscribers", s.plis_received),
            ("meeting_sfu_firs_received", "Full intra requests from subscribers", s.firs_received),
            (
                "meeting_sfu_keyframe_requests",
                "Keyframe requests sent to publishers (throttled)",
                s.keyframe_requests_sent,
            ),
            (
                "meeting_sfu_keyframe_replays",
                "Consumers started from a publisher's cached keyframe (no request sent)",
                s.keyframe_replays,
            ),
            (
                "meeting_sfu_replayed_packets",
                "Packets sent from a publisher's recent packets to catch a new consumer up",
                s.replayed_packets,
            ),
            ("meeting_sfu_recorder_bytes", "Bytes of media written by recordings", s.recorder_bytes),
            (
                "meeting_sfu_rtp_send_errors",
                "Forwarded RTP copies dropped because they could not be protected or sent",
                s.send_errors,
            ),
            (
                "meeting_sfu_recorder_dropped",
                "RTP packets and mix frames not recorded because the disk was behind",
                s.recorder_dropped,
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        dropped = CounterMetricFamily(
            "meeting_sfu_udp_datagrams_dropped",
            "Datagrams dropped by the shared media UDP sockets, by reason",
            labels=["reason"],
        )
        for reason in UDP_DROP_REASONS:
            dropped.add_metric([reason], s.udp_datagrams_dropped[reason])
        yield dropped
        layers = CounterMetricFamily(
            "meeting_sfu_simulcast_packets_in",
            "RTP packets received on simulcast layers, by rank (0: lowest)",
            labels=["layer"],
        )
        for layer in LAYERS:
            layers.add_metric([layer], s.layer_packets_in.get(layer, 0))
        yield layers
        yield CounterMetricFamily(
            "meeting_sfu_simulcast_layer_switches",
            "Subscribers moved to another simulcast layer",
            value=s.layer_switches,
        )
        yield CounterMetricFamily(
            "meeting_sfu_padding_packets_out",
            "Padding probes sent to subscribers held below their top simulcast layer",
            value=s.padding_packets_out,
        )
        yield s.subscriber_estimate_bps.family(
            "meeting_sfu_subscriber_estimate_bits_per_second",
            "Subscribers' bandwidth estimates (REMB) as received",
        )
        yield s.rtt_seconds.family(
            "meeting_sfu_rtt_seconds", "Round-trip time from RTCP receiver reports"
        )
        yield s.jitter_seconds.family(
            "meeting_sfu_jitter_seconds", "Interarrival jitter reported in RTCP receiver reports"
        )
        yield s.forwarding_seconds.family(
            "meeting_sfu_forwarding_latency_seconds",
            "Time from a packet's arrival to its last copy sent (sampled)",
        )
        yield s.mixer_tick_seconds.family(
            "meeting_sfu_mixer_tick_seconds", "Time spent per 20 ms audio mixer tick"
        )
        yield s.loop_lag_seconds.family(
            "meeting_sfu_event_loop_lag_seconds", "How late the event loop runs a timer"
        )


def watch_pc_states(pc: Any, stats: MediaStats) -> None:
    """Keep `stats.peer_connections` (current PCs by state) up to date for this PC."""
    last: list[str | None] = [pc.connectionState]
    stats.pc_state_changed(None, pc.connectionState)

    @pc.on("connectionstatechange")
    def on_state() -> None:
        new = pc.connectionState
        # A closed PC is gone: it leaves the gauge instead of piling up under "closed".
        stats.pc_state_changed(last[0], None if new == "closed" else new)
        last[0] = None if new == "closed" else new


async def measure_loop_lag(stats: MediaStats, interval: float = 0.5) -> None:
    """Runs until cancelled: how late a sleep wakes up is the event loop's lag."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        stats.loop_lag_seconds.observe(max(0.0, loop.time() - start - interval))


def now() -> float:
    return time.perf_counter()
