"""Writes bench results into README.md, between the bench markers, with the commands that made them.

`python -m bench.readme RESULT.json [...]` (or `meeting-sfu bench ... --readme README.md`) renders
each result file as a Markdown table: one row per server and size, then the ratios ours/baseline.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

START = "<!-- bench-results:start (written by bench/readme.py) -->"
END = "<!-- bench-results:end -->"


def _q(run: dict[str, Any], key: str, nd: int = 0) -> str:
    q = run.get(key) or {}
    if q.get("p50") is None:
        return "-"
    return f"{q['p50']:.{nd}f} / {q['p95']:.{nd}f}"


def _n(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(report: dict[str, Any]) -> str:
    command = report.get("command") or []
    lines = [
        f"`{shlex.join(command)}`" if command else "",
        "",
        f"{report.get('started_at', '?')}, {report.get('host', {}).get('cpus', '?')} CPUs, load "
        + " ".join(f"{x:.2f}" for x in report.get("host", {}).get("load_at_start", [])),
        "",
        "| server | meetings x pubs x subs | server CPU (cores) | forwarded pkt/s | CPU/pkt (us) "
        "| fps min/mean | e2e latency p50/p95 (ms) | forwarding p50/p95 (ms) | loss % | RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in report.get("runs", []):
        if "failed" in run:
            lines.append(f"| {run.get('server')} | failed: {run['failed']} |||||||||")
            continue
        size = f"{run['meetings']} x {run['publishers']} x {run['subscribers']}"
        lines.append(
            f"| {'ours' if run['server'] == 'sfu' else run['server']} | {size} "
            f"| {_n(run.get('server_cpu_cores'), '.3f')} | {_n(run.get('forwarded_pps'), '.0f')} "
            f"| {_n(run.get('cpu_us_per_packet'), '.1f')} "
            f"| {_n(run.get('fps_min'), '.1f')} / {_n(run.get('fps_mean'), '.1f')} "
            f"| {_q(run, 'latency_e2e_ms')} | {_q(run, 'latency_forward_ms', 1)} "
            f"| {_n(run.get('loss_percent'), '.2f')} | {_n(run.get('server_rss_mb'), '.0f')} |"
        )
    ratios = report.get("ratios") or []
    if ratios:
        lines += [
            "",
            "Ours divided by the baseline (below 1: ours costs less or is faster):",
            "",
            "| subs | CPU | CPU/pkt | fps mean | e2e latency p50 | RSS |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in ratios:
            lines.append(
                f"| {r['subscribers']} | {_n(r.get('cpu'), '.3f')} | {_n(r.get('cpu_per_packet'), '.3f')} "
                f"| {_n(r.get('fps_mean'), '.2f')} | {_n(r.get('latency_e2e_p50'), '.2f')} "
                f"| {_n(r.get('rss'), '.2f')} |"
            )
    return "\n".join(lines)


def write(readme: Path, reports: list[dict[str, Any]]) -> None:
    """Replace what stands between the markers (appending a section when they are missing)."""
    body = "\n\n".join(render(r) for r in reports)
    block = f"{START}\n{body}\n{END}"
    text = readme.read_text() if readme.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Bench results\n\n" + block + "\n"
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__)
    p.add_argument("results", nargs="+", help="JSON files written by `meeting-sfu bench --json`")
    p.add_argument("--readme", default="README.md")
    args = p.parse_args(argv)
    reports = [json.loads(Path(f).read_text()) for f in args.results]
    write(Path(args.readme), reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
