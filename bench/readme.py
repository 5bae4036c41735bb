"""Writes bench results into README.md, each between its own markers, with the command that made it.

`python -m bench.readme RESULT.json [...]` (or `meeting-sfu bench ... --readme README.md`) renders
each result file as a Markdown table: one row per server and size, then the ratios ours/baseline.
Each table is keyed by its result file (by its command when it has none): writing one replaces
that table only, and paths in the command are written relative to the README's folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

# One table of an earlier version held every result: replaced by keyed blocks when written.
START = "<!-- bench-results:start (written by bench/readme.py) -->"
END = "<!-- bench-results:end -->"
BLOCK = re.compile(r"<!-- bench-results:start (?P<key>[^>]+?) -->\n.*?<!-- bench-results:end (?P=key) -->\n?", re.S)
PATH_OPTIONS = ("--json", "--readme")


def relative_command(command: list[str], base: Path) -> list[str]:
    """The command with its --json and --readme paths relative to `base` where they lie in it."""
    out, path_next = [], False
    for arg in command:
        option, eq, value = arg.partition("=")
        if path_next:
            arg, path_next = _relative(arg, base), False
        elif option in PATH_OPTIONS and eq:
            arg = f"{option}={_relative(value, base)}"
        elif arg in PATH_OPTIONS:
            path_next = True
        out.append(arg)
    return out


def _relative(path: str, base: Path) -> str:
    if not os.path.isabs(path):
        return path
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:  # outside the README's folder: the path is all there is
        return path


def key_of(command: list[str]) -> str:
    """The results file a (relative) command wrote, else the command without --readme."""
    for i, arg in enumerate(command):
        if arg == "--json" and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith("--json="):
            return arg.split("=", 1)[1]
    kept = [a for i, a in enumerate(command) if a != "--readme" and not a.startswith("--readme=")
            and (i == 0 or command[i - 1] != "--readme")]
    return shlex.join(kept).replace("--", "- -")  # no "--" inside an HTML comment


def _q(run: dict[str, Any], key: str, nd: int = 0) -> str:
    q = run.get(key) or {}
    if q.get("p50") is None:
        return "-"
    return f"{q['p50']:.{nd}f} / {q['p95']:.{nd}f}"


def _n(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(report: dict[str, Any], command: list[str] | None = None) -> str:
    if command is None:
        command = report.get("command") or []
    lines = [
        f"`{shlex.join(command)}`" if command else "",
        "",
        f"{report.get('started_at', '?')}, {report.get('host', {}).get('cpus', '?')} CPUs, load "
        + " ".join(f"{x:.2f}" for x in report.get("host", {}).get("load_at_start", [])),
        "",
        "| server | meetings x pubs x subs | server CPU (cores) | forwarded pkt/s | CPU/pkt (us) "
        "| fps min/mean | e2e latency p50/p95 (ms) | forwarding p50/p95 (ms) | join to first frame p50/p95 (ms) "
        "| loss % | RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in report.get("runs", []):
        if "failed" in run:
            lines.append(f"| {run.get('server')} | failed: {run['failed']} ||||||||||")
            continue
        size = f"{run['meetings']} x {run['publishers']} x {run['subscribers']}"
        lines.append(
            f"| {'ours' if run['server'] == 'sfu' else run['server']} | {size} "
            f"| {_n(run.get('server_cpu_cores'), '.3f')} | {_n(run.get('forwarded_pps'), '.0f')} "
            f"| {_n(run.get('cpu_us_per_packet'), '.1f')} "
            f"| {_n(run.get('fps_min'), '.1f')} / {_n(run.get('fps_mean'), '.1f')} "
            f"| {_q(run, 'latency_e2e_ms')} | {_q(run, 'latency_forward_ms', 1)} "
            f"| {_q(run, 'join_to_first_frame_ms')} "
            f"| {_n(run.get('loss_percent'), '.2f')} | {_n(run.get('server_rss_mb'), '.0f')} |"
        )
    settings = report.get("settings") or {}
    if settings.get("join_batch"):
        after = "; ".join(
            f"{r['subscribers']} subs {_q(r, 'connected_to_first_frame_ms')}"
            for r in report.get("runs", []) if "failed" not in r and r.get("connected_to_first_frame_ms")
        )
        line = f"Subscribers joined {settings['join_batch']} at a time, {settings.get('join_interval_s')} s apart."
        if after:
            line += (" Of the join to first frame, from the receive PC connected (ICE and DTLS done) to the"
                     f" first frame, p50 / p95 (ms): {after}.")
        lines += ["", line]
    per_subscriber = report.get("rss_per_extra_subscriber") or []
    if per_subscriber:
        lines += [
            "",
            "RSS per extra subscriber (MB): "
            + "; ".join(
                f"{'ours' if r['server'] == 'sfu' else r['server']} {r['from']} -> {r['to']}: {r['mb']:.3f}"
                for r in per_subscriber
            ),
        ]
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
    """Each report's table replaces the block of the same key; a new key goes after the last
    block (or into a new section at the end); the unkeyed block of an earlier version is
    replaced by the tables written."""
    text = readme.read_text() if readme.exists() else ""
    base = readme.absolute().parent
    blocks = []
    for report in reports:
        command = relative_command(report.get("command") or [], base)
        key = key_of(command)
        blocks.append((key, f"<!-- bench-results:start {key} -->\n{render(report, command)}\n"
                            f"<!-- bench-results:end {key} -->\n"))
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + "\n".join(b for _, b in blocks) + "\n" + tail.lstrip("\n")
        readme.write_text(text)
        return
    for key, block in blocks:
        existing = {m.group("key"): m for m in BLOCK.finditer(text)}
        if key in existing:
            m = existing[key]
            text = text[: m.start()] + block + text[m.end():]
        elif existing:
            last = max(existing.values(), key=lambda m: m.end())
            text = text[: last.end()] + "\n" + block + text[last.end():]
        else:
            text = text.rstrip() + "\n\n## Bench results\n\n" + block
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
