"""From what the clients saw in the window to a run's figures, and ours divided by the baseline."""

from __future__ import annotations

import math
from typing import Any

from .protocol import Result


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)  # nearest rank
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def rounded(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def kernel_counted(results: list[Result]) -> dict[str, Any]:
    """Subscribers counted by the kernel (`--reading`): packets/s each received, against the
    subscribers of the same meeting that read every packet (in the same client process when it
    has some: its snapshots are taken at the same instants). Their loss is what they lack."""
    readers: dict[tuple[str, int], list[tuple[float, float]]] = {}  # (meeting, process) -> (pps, bps)
    counted: list[tuple[str, int, float]] = []
    for r in results:
        for c in r.clients:
            spec, start, end = c["spec"], c["start"], c["end"]
            if spec["role"] != "subscriber" or spec["decode"]:
                continue
            span = max(1e-3, end["at"] - start["at"])
            if spec.get("kernel_count"):
                if start.get("kernel_datagrams") is not None and end.get("kernel_datagrams") is not None:
                    got = end["kernel_datagrams"] - start["kernel_datagrams"]
                    counted.append((spec["meeting_id"], r.worker, got / span))
                continue
            zero = {"packets": 0, "bytes": 0}
            packets = sum(e["packets"] - start["streams"].get(k, zero)["packets"] for k, e in end["streams"].items())
            size = sum(e["bytes"] - start["streams"].get(k, zero)["bytes"] for k, e in end["streams"].items())
            readers.setdefault((spec["meeting_id"], r.worker), []).append((packets / span, size * 8 / span))
    expected = lacking = pps = bps = 0.0
    for meeting, worker, rate in counted:
        refs = readers.get((meeting, worker)) or [x for (m, _), v in readers.items() if m == meeting for x in v]
        if not refs:
            continue
        ref = sorted(x[0] for x in refs)[len(refs) // 2]
        bits_per_packet = sum(x[1] for x in refs) / max(1e-9, sum(x[0] for x in refs))
        expected += ref
        lacking += max(0.0, ref - rate)
        pps += rate
        bps += rate * bits_per_packet
    return {
        "subscribers": len(counted),
        "pps": pps,
        "bps": bps,  # estimated from the readers' bytes per packet
        "loss_percent": 100 * lacking / expected if expected else None,
    }


def aggregate(results: list[Result], window: float) -> dict[str, Any]:
    """A run's media figures from what its workers' clients saw, and their CPU, over `window` s."""
    clients = [c for r in results for c in r.clients]
    kernel = kernel_counted(results)
    sent: dict[int, float] = {}
    for c in clients:
        for k, t in c["sent"]:
            sent.setdefault(k, t)
    pps = bps = 0.0
    lost = expected = 0
    fps: list[float] = []
    decoded_fps: list[float] = []
    e2e: list[float] = []
    forward: list[float] = []
    first_frame: list[float] = []
    after_connect: list[float] = []
    arrivals = 0
    errors: list[str] = []
    audio_pps = 0.0
    keyframes = 0
    for c in clients:
        errors += c["errors"]
        keyframes += c["end"].get("keyframes_requested", 0) - c["start"].get("keyframes_requested", 0)
        span = max(1e-3, c["end"]["at"] - c["start"]["at"])
        audio_pps += (c["end"]["audio_packets"] - c["start"]["audio_packets"]) / span
        if c["spec"]["role"] != "subscriber" or c["spec"].get("kernel_count"):
            continue  # kernel-counted subscribers: `kernel_counted`
        start, end = c["start"], c["end"]
        span = max(1e-3, end["at"] - start["at"])
        n_streams = len([u for u in c["spec"]["publishers"] if u != c["spec"]["user_id"]])
        rates = []
        for ssrc, e in end["streams"].items():
            s = start["streams"].get(ssrc, {"packets": 0, "bytes": 0, "frames": 0, "expected": 0})
            dp = e["packets"] - s["packets"]
            pps += dp / span
            bps += (e["bytes"] - s["bytes"]) * 8 / span
            de = e["expected"] - s["expected"]
            if de > 0:
                expected += de
                lost += max(0, de - dp)
            if e["frames"] > 0 or dp > 0:
                rates.append((e["frames"] - s["frames"]) / span)
        rates += [0.0] * max(0, n_streams - len(rates))
        fps += rates
        if c["spec"]["decode"] and n_streams:
            decoded_fps.append((end["decoded"] - start["decoded"]) / span / n_streams)
        e2e += c["e2e_ms"]
        arrivals += len(c["arrivals"])
        for k, t in c["arrivals"]:
            t_sent = sent.get(k)
            if t_sent is not None and -0.001 <= t - t_sent < 10:
                forward.append((t - t_sent) * 1000)
        if c["first_frame_s"] is not None:
            first_frame.append(c["first_frame_s"] * 1000)
        if c.get("connected_to_first_frame_s") is not None:
            after_connect.append(c["connected_to_first_frame_s"] * 1000)
    cpu_s = sum(r.cpu_s for r in results)
    return {
        "subscriber_streams": len(fps),
        "forwarded_pps": round(pps + kernel["pps"], 1),
        "forwarded_bps": round(bps + kernel["bps"]),
        "kernel_counted_subscribers": kernel["subscribers"],
        "kernel_counted_loss_percent": rounded(kernel["loss_percent"], 3),
        "audio_mix_pps": round(audio_pps, 1),
        "fps_min": rounded(min(fps) if fps else None),
        "fps_mean": rounded(sum(fps) / len(fps) if fps else None),
        "decoded_fps_min": rounded(min(decoded_fps) if decoded_fps else None),
        "decoded_fps_mean": rounded(sum(decoded_fps) / len(decoded_fps) if decoded_fps else None),
        "loss_percent": rounded(100 * lost / expected if expected else None, 3),
        "join_to_first_frame_ms": {
            "p50": rounded(pct(first_frame, 50), 1),
            "p95": rounded(pct(first_frame, 95), 1),
            "samples": len(first_frame),
        },
        "connected_to_first_frame_ms": {
            "p50": rounded(pct(after_connect, 50), 1),
            "p95": rounded(pct(after_connect, 95), 1),
            "samples": len(after_connect),
        },
        "latency_forward_ms": {
            "p50": rounded(pct(forward, 50)),
            "p95": rounded(pct(forward, 95)),
            "samples": len(forward),
            "frames": arrivals,
        },
        "latency_e2e_ms": {
            "p50": rounded(pct(e2e, 50), 1),
            "p95": rounded(pct(e2e, 95), 1),
            "samples": len(e2e),
        },
        "client_cpu_cores": rounded(cpu_s / window, 3),
        # per client process: what each holds (publishers, decoding and light subscribers)
        "client_processes_cpu": [
            {
                "cores": rounded(r.cpu_s / window, 3),
                "publishers": sum(1 for c in r.clients if c["spec"]["role"] == "publisher"),
                "decoding": sum(1 for c in r.clients if c["spec"]["role"] == "subscriber" and c["spec"]["decode"]),
                "light": sum(1 for c in r.clients if c["spec"]["role"] == "subscriber" and not c["spec"]["decode"]),
            }
            for r in sorted(results, key=lambda r: r.worker)
        ],
        "replay_keyframes_sent": keyframes,
        "client_errors": errors[:20],
    }


def rss_per_subscriber(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Server RSS per extra subscriber, per server kind: from its smallest size to each larger
    one (each run is a fresh server, measured at the end of its window)."""
    out = []
    for kind in ("sfu", "baseline"):
        mine = sorted(
            (r for r in runs if r["server"] == kind and r.get("server_rss_mb") is not None),
            key=lambda r: r["meetings"] * r["subscribers"],
        )
        if len(mine) < 2:
            continue
        first = mine[0]
        for run in mine[1:]:
            extra = run["meetings"] * run["subscribers"] - first["meetings"] * first["subscribers"]
            if extra <= 0:
                continue
            out.append({
                "server": kind,
                "from": first["subscribers"],
                "to": run["subscribers"],
                "mb": round((run["server_rss_mb"] - first["server_rss_mb"]) / extra, 3),
            })
    return out


RATIO_KEYS = (
    ("server_cpu_cores", "cpu"),
    ("cpu_us_per_packet", "cpu_per_packet"),
    ("fps_mean", "fps_mean"),
    ("fps_min", "fps_min"),
    ("decoded_fps_mean", "decoded_fps_mean"),
    ("server_rss_mb", "rss"),
)


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ours / baseline at each size measured with both."""
    out = []
    for ours in runs:
        if ours["server"] != "sfu":
            continue
        base = next(
            (
                b
                for b in runs
                if b["server"] == "baseline"
                and b["subscribers"] == ours["subscribers"]
                and b["meetings"] == ours["meetings"]
                and b["publishers"] == ours["publishers"]
            ),
            None,
        )
        if base is None:
            continue
        row: dict[str, Any] = {
            "meetings": ours["meetings"],
            "publishers": ours["publishers"],
            "subscribers": ours["subscribers"],
        }
        for key, name in RATIO_KEYS:
            a, b = ours.get(key), base.get(key)
            row[name] = round(a / b, 3) if a is not None and b else None
        for q in ("p50", "p95"):
            a, b = ours["latency_e2e_ms"][q], base["latency_e2e_ms"][q]
            row[f"latency_e2e_{q}"] = round(a / b, 3) if a is not None and b else None
        out.append(row)
    return out
