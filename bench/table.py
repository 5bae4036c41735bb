"""The terminal table of a bench's runs (README tables are bench/readme.py's)."""

from __future__ import annotations

from typing import Any


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _pair(q: dict[str, Any], nd: int) -> str:
    return f"{_f(q['p50'], nd)}/{_f(q['p95'], nd)}"


def table(runs: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> str:
    head = [
        "server",
        "M",
        "P",
        "S",
        "cpu cores",
        "pkt/s",
        "Mbit/s",
        "us/pkt",
        "fps min/mean",
        "dec fps",
        "loss %",
        "join->frame p50/p95 ms",
        "fwd lat p50/p95 ms",
        "e2e lat p50/p95 ms",
        "RSS MB",
        "client cpu",
        "other cpu",
    ]
    rows = [head]
    for r in runs:
        rows.append(
            [
                r["server"],
                str(r["meetings"]),
                str(r["publishers"]),
                str(r["subscribers"]),
                _f(r["server_cpu_cores"], 3),
                _f(r["forwarded_pps"], 0),
                _f(r["forwarded_bps"] / 1e6 if r["forwarded_bps"] is not None else None, 2),
                _f(r["cpu_us_per_packet"]),
                f"{_f(r['fps_min'])}/{_f(r['fps_mean'])}",
                _f(r["decoded_fps_mean"]),
                _f(r["loss_percent"], 2),
                _pair(r["join_to_first_frame_ms"], 0),
                _pair(r["latency_forward_ms"], 2),
                _pair(r["latency_e2e_ms"], 0),
                _f(r["server_rss_mb"]),
                _f(r["client_cpu_cores"], 2),
                _f(r["host_other_cores"], 2),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    if ratio_rows:
        lines.append("")
        lines.append("ours / baseline (lower is better for cpu, cpu/pkt, latency, rss):")
        for q in ratio_rows:
            lines.append(
                f"  M={q['meetings']} P={q['publishers']} S={q['subscribers']}: "
                f"cpu {_f(q['cpu'], 3)}  cpu/pkt {_f(q['cpu_per_packet'], 3)}  "
                f"fps mean {_f(q['fps_mean'], 2)} min {_f(q['fps_min'], 2)}  "
                f"e2e latency p50 {_f(q['latency_e2e_p50'], 2)} p95 {_f(q['latency_e2e_p95'], 2)}  "
                f"rss {_f(q['rss'], 2)}"
            )
    return "\n".join(lines)
