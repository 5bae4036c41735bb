"""Capacity: how many forwarded packets/s a node sustains, with 1 and with 2 media workers, or
what 2 nodes of 1 worker each carry against 1 node.

For each `--workers` value (or each `--nodes` value), meetings of 1 publisher -> K subscribers
are added one step at a time (`meeting-sfu bench --meetings M`, a fresh server each time) until a
run loses more than `--max-loss` % of packets or a subscriber's stream falls below `--min-fps`;
the highest forwarded packets/s of a run that held is the capacity. The server does all its work
(SRTP, RTCP, NACK/RTX, metrics); the load generator, on the same cores, is kept light:

* publishers replay a VP8 clip encoded once per client process (no real-time encoder each);
* one subscriber in the whole run decodes (fps, forwarding latency); every other one is light:
  its process reads its ICE socket with recvmmsg(2) in batches and counts the SRTP headers
  without decrypting (bench/batch_receive.py).

Each step reports the generator's CPU per received packet beside the server's CPU per forwarded
packet, and the load average before it (other work on the machine skews a capacity figure).

`--nodes 1,2` is the other axis: nodes=1 is one node with `[media] workers = 1`, nodes=2 a
cluster of two such nodes on this machine (`bench.load --nodes 2`: a redis-server and a
PostgreSQL of its own, meeting i on node i % 2, each meeting's clients calling its owner, so no
call is relayed on the media path), the server CPU summed over both. Same stepping and held
rules; on one machine the two nodes share its cores with each other and with the generator.

    .venv/bin/python -m bench.capacity --workers 1,2 --json bench/results/capacity.json
    .venv/bin/python -m bench.capacity --nodes 1,2 --subscribers 75 --json bench/results/capacity-nodes.json
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


def one_run(value: int, meetings: int, options: argparse.Namespace) -> dict[str, Any]:
    """One step: `value` is the workers of the one node, or (the nodes axis) the nodes of 1 worker each."""
    nodes, workers = (value, 1) if options.axis == "nodes" else (1, value)
    with tempfile.TemporaryDirectory(prefix="meeting-sfu-capacity-") as tmp:
        out = Path(tmp) / "run.json"
        cmd = [
            sys.executable, "-m", "bench.load",
            "--meetings", str(meetings),
            "--publishers", "1",
            "--subscribers", str(options.subscribers),
            "--decoders", "1",
            "--decoding-meetings", "1",
            "--replay",
            "--bitrate", str(options.bitrate),
            "--batch-ms", str(options.batch_ms),
            *(["--reading", str(options.reading)] if options.reading else []),
            "--setup-timeout", str(options.setup_timeout),
            "--duration", str(options.duration),
            "--warmup", str(options.warmup),
            "--width", str(options.width),
            "--height", str(options.height),
            "--processes", str(options.processes),
            "--nodes", str(nodes),
            "--quiet",
            "--json", str(out),
        ]
        env = {**os.environ, "MEETING_SFU_MEDIA_WORKERS": str(workers)}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if not out.exists():
            return {"workers": workers, "nodes": nodes, "meetings": meetings, "failed": proc.stderr[-500:]}
        report = json.loads(out.read_text())
    run = report["runs"][0]
    run["workers"] = workers
    run["nodes"] = nodes
    return run


def held(run: dict[str, Any], options: argparse.Namespace) -> bool:
    if "failed" in run:
        return False
    fps = run.get("fps_min")  # of every subscriber's stream, from RTP marker bits
    decoded = run.get("decoded_fps_min")  # the decoding subscriber's: the stream stays decodable
    loss = run.get("loss_percent")
    kernel_loss = run.get("kernel_counted_loss_percent")  # --reading: the others' deficit
    return (
        fps is not None
        and fps >= options.min_fps
        and (decoded is None or decoded >= options.min_fps)
        and loss is not None
        and loss <= options.max_loss
        and (kernel_loss is None or kernel_loss <= options.max_loss)
        and (not options.reading or run.get("kernel_counted_subscribers"))
    )


def describe(run: dict[str, Any], ok: bool, axis: str = "workers") -> str:
    where = f"{axis}={run[axis]}"
    if "failed" in run:
        return f"{where} meetings={run['meetings']} FAILED to run: {run['failed'][-200:]}"
    load = run.get("load_before") or [0.0]
    per_node = ""
    if run.get("cluster"):
        per_node = " [" + ", ".join(
            f"{n['node_id']}: {n['meetings']} meetings, {n.get('rtp_out_pps')} pkt/s out, {n.get('cpu_cores')} cores"
            for n in run["cluster"]["nodes"]
        ) + "]"
    return (
        f"{where} meetings={run['meetings']} x {run.get('subscribers')}: "
        f"{run.get('forwarded_pps')} pkt/s, fps min {run.get('fps_min')}, loss {run.get('loss_percent')} %, "
        f"kernel-counted {run.get('kernel_counted_subscribers') or 0} "
        f"(loss {run.get('kernel_counted_loss_percent')} %), "
        f"server {run.get('server_cpu_cores')} cores ({run.get('cpu_us_per_packet')} us/pkt), "
        f"load generator {run.get('client_cpu_cores')} cores ({run.get('client_cpu_us_per_packet')} us/pkt), "
        f"other work {run.get('host_other_cores')} cores, load before {load[0]:.2f}{per_node}: "
        f"{'held' if ok else 'FAILED'}"
    )


def capacity(value: int, options: argparse.Namespace, start: int) -> dict[str, Any]:
    """Steps up from `start` meetings until one fails; if the very first fails, steps down
    (to `--start`) until one holds."""
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    meetings, direction = start, 1
    while options.start <= meetings <= options.max_meetings:
        run = one_run(value, meetings, options)
        ok = held(run, options)
        steps.append(run)
        print(describe(run, ok, options.axis), file=sys.stderr, flush=True)
        if ok:
            if best is None or (run.get("forwarded_pps") or 0) > (best.get("forwarded_pps") or 0):
                best = run
            if direction < 0:
                break
        elif direction > 0 and best is None and meetings > options.start:
            direction = -1
        elif direction > 0:
            break
        meetings += direction * options.step
    if options.axis == "nodes":
        return {"nodes": value, "workers": 1, "best": best, "steps": steps}
    return {"workers": value, "best": best, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="comma-separated [media] workers values")
    p.add_argument(
        "--nodes",
        help="comma-separated node counts, 1 media worker each (instead of --workers): nodes > 1 run as a "
        "cluster on this machine with a redis-server and a PostgreSQL of its own",
    )
    p.add_argument("--subscribers", "-s", type=int, default=50, help="per meeting")
    p.add_argument("--start", type=int, default=1, help="meetings in the first step")
    p.add_argument(
        "--resume",
        action="store_true",
        help="after the first --workers value, start at the meetings the previous one held "
        "(saves the steps it already passed; steps down if that one fails)",
    )
    p.add_argument("--step", type=int, default=1, help="meetings added per step")
    p.add_argument("--max-meetings", type=int, default=16)
    p.add_argument("--duration", type=float, default=8.0, help="measuring window per step, s")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument(
        "--processes", type=int, default=3,
        help="load generator processes: one for the publishers and the decoding subscriber, the others "
        "for the light subscribers",
    )
    p.add_argument("--bitrate", type=int, default=600_000, help="of the replayed VP8 clip, bit/s")
    p.add_argument("--batch-ms", type=float, default=250.0, help="light subscribers read their sockets every N ms")
    p.add_argument(
        "--reading", type=int, default=0, metavar="N",
        help="only N light subscribers per meeting read every packet; the kernel counts the others' "
        "(bench.load --reading); 0: all read",
    )
    p.add_argument("--setup-timeout", type=float, default=40.0, help="per client, s (many peers join at once)")
    p.add_argument("--max-loss", type=float, default=0.5, help="percent")
    p.add_argument("--min-fps", type=float, default=29.0)
    p.add_argument("--json", metavar="FILE")
    options = p.parse_args(argv)
    options.axis = "nodes" if options.nodes else "workers"
    values = [int(v) for v in (options.nodes or options.workers).split(",")]
    started = time.time()
    started_load = list(os.getloadavg())
    results: list[dict[str, Any]] = []
    for value in values:
        start = options.start
        if options.resume and results and results[-1]["best"]:
            start = max(options.start, results[-1]["best"]["meetings"])
        results.append(capacity(value, options, start))
    base = (results[0]["best"] or {}).get("forwarded_pps") or 0
    print(
        f"{options.axis:>7}  held (meetings x subs)  forwarded pkt/s  server cores  server us/pkt  "
        "generator cores  generator us/pkt  vs first"
    )
    for r in results:
        b = r["best"] or {}
        pps = b.get("forwarded_pps") or 0
        print(
            f"{r[options.axis]:>7}  {b.get('meetings', '-'):>12} x {options.subscribers:<7}  {pps:>15.0f}  "
            f"{b.get('server_cpu_cores') or 0:>12.3f}  {b.get('cpu_us_per_packet') or 0:>13.1f}  "
            f"{b.get('client_cpu_cores') or 0:>15.3f}  {b.get('client_cpu_us_per_packet') or 0:>16.1f}  "
            f"{pps / base if base else 0:>8.2f}"
        )
    load = " ".join(f"{x:.2f}" for x in started_load)
    print(f"load average at start {load}; {os.cpu_count()} CPUs")
    if options.json:
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        body = {
            "bench": "meeting-sfu capacity",
            "command": ["python", "-m", "bench.capacity", *(argv if argv is not None else sys.argv[1:])],
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "host": {"cpus": os.cpu_count(), "load_at_start": started_load},
            # what varies between the results: one node's [media] workers, or nodes of 1 worker each
            "axis": options.axis,
            "load_generator": {
                "publishers": f"replay a VP8 clip encoded once ({options.width}x{options.height}, "
                f"{options.bitrate} bit/s target, 30 fps)",
                "subscribers": f"1 decoding in the run; the rest light, read every {options.batch_ms:g} ms with "
                "recvmmsg and counted by their SRTP headers",
                "processes": options.processes,
            },
            "results": results,
        }
        Path(options.json).write_text(json.dumps(body, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
