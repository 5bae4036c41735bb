"""Capacity: how many forwarded packets/s a node sustains, with 1 and with 2 media workers.

For each `--workers` value, meetings of 1 publisher -> K subscribers are added one step at a
time (`meeting-sfu bench --meetings M`, a fresh server each time) until a run loses more than
`--max-loss` % of packets or a decoding subscriber drops below `--min-fps`; the highest forwarded
packets/s of a run that held is the capacity. Every subscriber but one per meeting is light: it
counts SRTP packets by their clear header on its ICE socket and drops them undecrypted, so the
load generator takes a small share of the machine (its CPU is reported beside the server's).

    .venv/bin/python -m bench.capacity --workers 1,2 --subscribers 40 --json bench/results/capacity.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def one_run(workers: int, meetings: int, options: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meeting-sfu-capacity-") as tmp:
        out = Path(tmp) / "run.json"
        cmd = [
            sys.executable, "-m", "bench.load",
            "--meetings", str(meetings),
            "--publishers", "1",
            "--subscribers", str(options.subscribers),
            "--decoders", "1",
            "--duration", str(options.duration),
            "--warmup", str(options.warmup),
            "--width", str(options.width),
            "--height", str(options.height),
            "--processes", str(options.processes),
            "--quiet",
            "--json", str(out),
        ]
        env = {**os.environ, "MEETING_SFU_MEDIA_WORKERS": str(workers)}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if not out.exists():
            return {"workers": workers, "meetings": meetings, "failed": proc.stderr[-500:]}
        report = json.loads(out.read_text())
    run = report["runs"][0]
    run["workers"] = workers
    return run


def held(run: dict[str, Any], options: argparse.Namespace) -> bool:
    if "failed" in run:
        return False
    fps = run.get("fps_min")
    loss = run.get("loss_percent")
    return fps is not None and fps >= options.min_fps and loss is not None and loss <= options.max_loss


def capacity(workers: int, options: argparse.Namespace) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for meetings in range(options.start, options.max_meetings + 1, options.step):
        run = one_run(workers, meetings, options)
        ok = held(run, options)
        steps.append(run)
        fwd = run.get("forwarded_pps")
        print(
            f"workers={workers} meetings={meetings} forwarded={fwd} pkt/s cpu={run.get('server_cpu_cores')} "
            f"fps_min={run.get('fps_min')} loss={run.get('loss_percent')} {'held' if ok else 'FAILED'}",
            file=sys.stderr,
        )
        if not ok:
            break
        if best is None or (fwd or 0) > (best.get("forwarded_pps") or 0):
            best = run
    return {"workers": workers, "best": best, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="comma-separated [media] workers values")
    p.add_argument("--subscribers", "-s", type=int, default=40, help="per meeting")
    p.add_argument("--start", type=int, default=1, help="meetings in the first step")
    p.add_argument("--step", type=int, default=1, help="meetings added per step")
    p.add_argument("--max-meetings", type=int, default=16)
    p.add_argument("--duration", type=float, default=8.0, help="measuring window per step, s")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--processes", type=int, default=2, help="load generator processes")
    p.add_argument("--max-loss", type=float, default=0.5, help="percent")
    p.add_argument("--min-fps", type=float, default=29.0)
    p.add_argument("--json", metavar="FILE")
    options = p.parse_args(argv)
    started = time.time()
    results = [capacity(int(w), options) for w in options.workers.split(",")]
    base = (results[0]["best"] or {}).get("forwarded_pps") or 0
    print("workers  meetings x subs  forwarded pkt/s  server cores  CPU/pkt us  client cores  vs first")
    for r in results:
        b = r["best"] or {}
        pps = b.get("forwarded_pps") or 0
        print(
            f"{r['workers']:>7}  {b.get('meetings', '-'):>8} x {options.subscribers:<4}  {pps:>15.0f}  "
            f"{b.get('server_cpu_cores') or 0:>12.3f}  {b.get('cpu_us_per_packet') or 0:>10.1f}  "
            f"{b.get('client_cpu_cores') or 0:>12.2f}  {pps / base if base else 0:>8.2f}"
        )
    if options.json:
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        body = {
            "bench": "meeting-sfu capacity",
            "command": ["python", "-m", "bench.capacity", *(argv if argv is not None else sys.argv[1:])],
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "host": {"cpus": os.cpu_count(), "load_at_start": list(os.getloadavg())},
            "results": results,
        }
        Path(options.json).write_text(json.dumps(body, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
