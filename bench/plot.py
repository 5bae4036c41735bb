"""Charts of bench result files: server CPU, latency and frame rate against subscribers, one
series per server (our SFU, the naive baseline) and meeting shape.

    .venv/bin/python -m bench.plot bench/results/run.json [more.json ...] --out bench/results/run

writes <out>-cpu.png, <out>-latency.png and <out>-fps.png (needs the `bench` extra: matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NAMES = {"sfu": "meeting-sfu (pass-through)", "baseline": "naive MediaRelay (re-encode)"}
COLORS = {"sfu": "tab:blue", "baseline": "tab:red"}


def load_runs(paths: list[str]) -> list[dict[str, Any]]:
    runs = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        runs += [r for r in data.get("runs", []) if "failed" not in r]
    return runs


def series(runs: list[dict[str, Any]]) -> dict[tuple[str, int, int], list[dict[str, Any]]]:
    """Runs grouped by (server, meetings, publishers), sorted by subscribers; a size measured
    twice keeps its last run."""
    out: dict[tuple[str, int, int], dict[int, dict[str, Any]]] = {}
    for r in runs:
        out.setdefault((r["server"], r["meetings"], r["publishers"]), {})[r["subscribers"]] = r
    return {k: [v[s] for s in sorted(v)] for k, v in sorted(out.items())}


def _label(key: tuple[str, int, int], many_shapes: bool) -> str:
    server, meetings, publishers = key
    name = NAMES.get(server, server)
    return f"{name}, {meetings} mtg x {publishers} pub" if many_shapes else name


def plot(paths: list[str], out: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    groups = series(load_runs(paths))
    if not groups:
        raise ValueError("no successful runs in " + ", ".join(paths))
    many = len({(m, p) for _, m, p in groups}) > 1
    written = []

    sizes = sorted({r["subscribers"] for rs in groups.values() for r in rs})

    def xaxis(ax: Any) -> None:
        if sizes[0] > 0 and sizes[-1] / sizes[0] >= 10:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.set_xlabel("subscribers per meeting")

    def finish(
        fig: Any,
        ax: Any,
        ylabel: str,
        name: str,
        title: str,
        ybottom: bool = True,
        legend: str = "upper left",
        ytop: float | None = None,
    ) -> None:
        xaxis(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if len(ax.get_lines()) > 4:  # many series: the legend goes right of the plot
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize=8, loc=legend)
        if ybottom:
            ax.set_ylim(bottom=0)
        if ytop is not None:
            ax.set_ylim(top=ytop)
        fig.tight_layout()
        path = Path(f"{out}-{name}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    # CPU: cores used by the server process, and CPU per forwarded packet.
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, rs in groups.items():
        xs = [r["subscribers"] for r in rs]
        color = COLORS.get(key[0])
        ax.plot(xs, [r["server_cpu_cores"] for r in rs], "o-", color=color, label=_label(key, many))
        ax2.plot(
            xs, [r["cpu_us_per_packet"] for r in rs], "o-", color=color, label=_label(key, many)
        )
    ax2.set_yscale("log")
    xaxis(ax2)
    ax2.set_ylabel("server CPU per forwarded packet (us, log)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    ax2.set_title("CPU per packet")
    finish(fig, ax, "server CPU (cores)", "cpu", "Server CPU")

    # Latency: end-to-end (capture -> decoded) for every server, forwarding for pass-through.
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, rs in groups.items():
        xs = [r["subscribers"] for r in rs]
        color = COLORS.get(key[0])
        lab = _label(key, many)
        ax.plot(
            xs, [r["latency_e2e_ms"]["p50"] for r in rs], "o-", color=color, label=f"{lab}: e2e p50"
        )
        ax.plot(
            xs,
            [r["latency_e2e_ms"]["p95"] for r in rs],
            "o--",
            color=color,
            alpha=0.6,
            label=f"{lab}: e2e p95",
        )
        for q, style in (("p50", "s-"), ("p95", "s:")):
            fwd = [r["latency_forward_ms"][q] for r in rs]
            if any(v is not None for v in fwd):
                ax.plot(xs, fwd, style, color=color, alpha=0.8, label=f"{lab}: forwarding {q}")
    ax.set_yscale("log")
    finish(
        fig,
        ax,
        "latency (ms, log)",
        "latency",
        "Publisher -> subscriber latency\n"
        "(e2e: capture to decoded frame; forwarding: RTP send to arrival)",
        ybottom=False,
    )

    # Frame rate received per subscriber stream. The top is set above the highest rate: lines
    # at the full frame rate would otherwise sit on the plot's border, out of sight.
    fig, ax = plt.subplots(figsize=(10, 4.2))
    rates = [r[k] for rs in groups.values() for r in rs for k in ("fps_mean", "fps_min") if r[k] is not None]
    for key, rs in groups.items():
        xs = [r["subscribers"] for r in rs]
        color = COLORS.get(key[0])
        lab = _label(key, many)
        ax.plot(xs, [r["fps_mean"] for r in rs], "o-", color=color, label=f"{lab}: mean")
        ax.plot(xs, [r["fps_min"] for r in rs], "v--", color=color, alpha=0.6, label=f"{lab}: min")
    finish(
        fig,
        ax,
        "frames/s received per subscriber stream",
        "fps",
        "Frame rate at subscribers",
        legend="lower left",
        ytop=max(rates, default=30.0) * 1.15,
    )
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="result JSON files of `meeting-sfu bench --json`")
    p.add_argument("--out", help="output prefix (default: the first file without .json)")
    args = p.parse_args(argv)
    out = args.out or str(Path(args.files[0]).with_suffix(""))
    try:
        for path in plot(args.files, out):
            print(path)
    except (ValueError, OSError, KeyError) as exc:
        print(f"plot: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
