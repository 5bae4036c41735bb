"""Load generator: N meetings x (P publishers + S subscribers) of synthetic Carbonio web clients
against a server process, measured from outside (server CPU and RSS from /proc, media at the
subscribers), optionally side by side with the naive MediaRelay baseline (bench/baseline.py).

    .venv/bin/meeting-sfu bench --meetings 1 --publishers 1 --sweep 1,5,20 --baseline \\
        --duration 10 --json bench/results/run.json
    .venv/bin/python -m bench.load --url http://127.0.0.1:10000 --token-secret S --server-pid PID

By default the bench starts `meeting-sfu serve` itself (a temp data dir, a free port on
127.0.0.1, a generated JWT secret, all through MEETING_SFU_* variables) and stops it by its PID.
Clients run in `--processes` worker processes; `--decoders` subscribers per meeting decode the
video (decoded fps, end-to-end latency), the others are light (they count RTP at their DTLS
transport), so that the client side is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from .clients import BenchClient, ClientSpec

ROOT = Path(__file__).resolve().parent.parent


# --- the server under test --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (a server may run media worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its descendants, all threads included."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for p in process_tree(pid):
        try:
            fields = _stat(p)
        except OSError:  # exited meanwhile
            continue
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


def host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from the `cpu` line of /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def proc_rss_mb(pid: int) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) in MB, summed over the process and its descendants."""
    rss = hwm = None
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = (rss or 0) + int(line.split()[1]) / 1024
                    elif line.startswith("VmHWM:"):
                        hwm = (hwm or 0) + int(line.split()[1]) / 1024
        except OSError:
            continue
    return rss, hwm


class ServerProcess:
    """A server under test run as a child process (ours or the baseline), stopped by PID."""

    def __init__(self, kind: str, bitrate: int) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = secrets.token_urlsafe(32)
        self.dir = Path(tempfile.mkdtemp(prefix=f"meeting-sfu-bench-{kind}-"))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if kind == "sfu":
            cmd = [sys.executable, "-m", "control_api.cli", "serve"]
            env.update(
                {
                    "MEETING_SFU_SERVER_HOST": "127.0.0.1",
                    "MEETING_SFU_SERVER_PORT": str(self.port),
                    "MEETING_SFU_STORAGE_DATA_DIR": str(self.dir / "data"),
                    "MEETING_SFU_RECORDING_DIR": str(self.dir / "recordings"),
                    "MEETING_SFU_AUTH_JWT_SECRET": self.secret,
                    "MEETING_SFU_MEDIA_ICE_ADDRESSES": "127.0.0.1",
                    "MEETING_SFU_LOGGING_LEVEL": "warning",
                }
            )
        else:
            cmd = [
                sys.executable,
                "-m",
                "bench.baseline",
                "--port",
                str(self.port),
                f"--secret={self.secret}",
                "--bitrate",
                str(bitrate),
            ]
        self.log_path = self.dir / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} server exited: {self.log_tail()}")
                try:
                    async with http.get(
                        f"{self.url}/public/meetings/{uuid.uuid4()}",
                        timeout=aiohttp.ClientTimeout(total=2),
                    ) as r:
                        await r.read()
                        return
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.1)
        raise RuntimeError(
            f"{self.kind} server not ready within {timeout:.0f} s: {self.log_tail()}"
        )

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- client worker processes ------------------------------------------------------------------


def _worker_main(
    index: int,
    base_url: str,
    specs: list[dict[str, Any]],
    settings: dict[str, Any],
    commands: Any,
    reports: Any,
) -> None:
    try:
        asyncio.run(_worker(index, base_url, specs, settings, commands, reports))
    except Exception as exc:  # pragma: no cover - reported to the parent
        reports.put(("fatal", index, f"{exc.__class__.__name__}: {exc}"))


async def _worker(
    index: int,
    base_url: str,
    specs: list[dict[str, Any]],
    settings: dict[str, Any],
    commands: Any,
    reports: Any,
) -> None:
    import aiortc.codecs.vpx

    from sfu.peer import IceSettings, configure_ice

    configure_ice(IceSettings())  # gather on 127.0.0.1 only; the PCs use no STUN server
    # The camera's VP8 encoder starts here (REMB moves it within aiortc's 0.25-1.5 Mbit/s).
    aiortc.codecs.vpx.DEFAULT_BITRATE = settings["bitrate"]
    loop = asyncio.get_running_loop()
    parent = os.getppid()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    clients = [
        BenchClient(
            ClientSpec(**s),
            base_url,
            http,
            width=settings["width"],
            height=settings["height"],
            fps=settings["fps"],
            timeout=settings["timeout"],
        )
        for s in specs
    ]
    gate = asyncio.Semaphore(settings["concurrency"])
    tasks: list[asyncio.Task[None]] = []
    marks: dict[str, Any] = {}

    async def setup(client: BenchClient) -> None:
        async with gate:
            try:
                await asyncio.wait_for(client.start(), settings["timeout"] + 5)
                error = None
            except Exception as exc:
                error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
                if client.errors:
                    error += f" ({client.errors[-1]})"
        reports.put(("ready", index, client.spec.role, error))

    try:
        for _ in range(100_000):  # bounded: the parent stops us long before
            try:
                cmd = await loop.run_in_executor(None, commands.get, True, 1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if cmd in ("publishers", "subscribers"):
                role = cmd[:-1]
                tasks += [asyncio.ensure_future(setup(c)) for c in clients if c.spec.role == role]
            elif cmd == "mark":
                for c in clients:
                    c.arrivals.clear()
                    c.sent_frames.clear()
                    c.e2e_ms.clear()
                    c.recording = True
                marks["start"] = {c.spec.user_id: c.snapshot() for c in clients}
                marks["cpu"] = time.process_time()
                reports.put(("marked", index, None, None))
            elif cmd == "end":
                for c in clients:
                    c.recording = False
                end = {c.spec.user_id: c.snapshot() for c in clients}
                cpu = time.process_time() - marks["cpu"]
                t0 = min(s["at"] for s in marks["start"].values()) if clients else time.time()
                out = []
                for c in clients:
                    out.append(
                        {
                            "spec": {
                                "user_id": c.spec.user_id,
                                "role": c.spec.role,
                                "decode": c.spec.decode,
                                "meeting_id": c.spec.meeting_id,
                                "publishers": c.spec.publishers,
                            },
                            "start": marks["start"][c.spec.user_id],
                            "end": end[c.spec.user_id],
                            "ready": c.ready_at is not None,
                            "first_frame_s": c.first_frame_delay(),
                            "errors": c.errors[-5:],
                            "e2e_ms": list(c.e2e_ms),
                            "arrivals": list(c.arrivals),
                            "sent": [(k, t) for k, t in c.sent_frames.items() if t >= t0 - 5],
                        }
                    )
                reports.put(("result", index, {"clients": out, "cpu_s": cpu}, None))
            elif cmd == "stop":
                return
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(
            *(asyncio.wait_for(c.close(), 10) for c in clients), return_exceptions=True
        )
        await http.close()
        reports.put(("stopped", index, None, None))


class Workers:
    """The client processes and their command/report queues."""

    def __init__(
        self, base_url: str, specs: list[ClientSpec], processes: int, settings: dict[str, Any]
    ) -> None:
        ctx = mp.get_context("spawn")
        self.reports = ctx.Queue()
        self.commands = []
        self.procs = []
        n = max(1, min(processes, len(specs)))
        slices: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        for i, spec in enumerate(specs):
            slices[i % n].append(asdict(spec))
        for i, chunk in enumerate(slices):
            q = ctx.Queue()
            p = ctx.Process(
                target=_worker_main,
                args=(i, base_url, chunk, settings, q, self.reports),
                daemon=True,
            )
            p.start()
            self.commands.append(q)
            self.procs.append(p)

    def send(self, cmd: str) -> None:
        for q in self.commands:
            q.put(cmd)

    async def report(self, timeout: float) -> tuple[str, int, Any, Any] | None:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self.reports.get, True, timeout)
        except queue.Empty:
            return None

    async def stop(self) -> None:
        self.send("stop")
        deadline = time.monotonic() + 20
        while any(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
            p.join(5)


# --- progress ---------------------------------------------------------------------------------


class Progress:
    """One stderr line, rewritten in place."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        pad = max(0, self.width - len(text))
        sys.stderr.write("\r" + text + " " * pad)
        sys.stderr.flush()
        self.width = len(text)

    def bar(self, label: str, done: float, total: float, extra: str = "") -> None:
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        filled = int(frac * 30)
        self.show(
            f"{label} [{'#' * filled}{'.' * (30 - filled)}] {done:5.1f}/{total:.0f} s {extra}"
        )

    def done(self) -> None:
        if self.enabled and self.width:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self.width = 0


# --- one run ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)  # nearest rank
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


async def create_meetings(
    base_url: str,
    authority: Any,
    meetings: int,
    publishers: int,
    subscribers: int,
    options: argparse.Namespace,
) -> list[ClientSpec]:
    specs: list[ClientSpec] = []
    async with aiohttp.ClientSession() as http:
        for m in range(meetings):
            room = str(uuid.uuid4())
            pubs = [str(uuid.uuid4()) for _ in range(publishers)]
            subs = [str(uuid.uuid4()) for _ in range(subscribers)]
            owner = authority(pubs[0], {room: "owner"})
            headers = {"Authorization": f"Bearer {owner}"}
            async with http.post(
                f"{base_url}/meetings",
                headers=headers,
                json={
                    "name": f"bench {m}",
                    "roomId": room,
                    "meetingType": "permanent",
                },
            ) as r:
                body = await r.json(content_type=None)
                if r.status != 200:
                    raise RuntimeError(f"create meeting: HTTP {r.status} {body}")
                meeting_id = body["id"]
            async with http.post(f"{base_url}/meetings/{meeting_id}/start", headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"start meeting: HTTP {r.status} {await r.text()}")
            for i, user in enumerate(pubs):
                specs.append(
                    ClientSpec(
                        user,
                        owner if i == 0 else authority(user, {room: "member"}),
                        meeting_id,
                        "publisher",
                        audio=options.audio,
                        seed=len(specs),
                    )
                )
            for i, user in enumerate(subs):
                specs.append(
                    ClientSpec(
                        user,
                        authority(user, {room: "member"}),
                        meeting_id,
                        "subscriber",
                        decode=i < options.decoders,
                        audio=options.audio,
                        publishers=pubs,
                    )
                )
    return specs


def make_authority(secret: str) -> Any:
    from control_api.auth import TokenAuthority

    tokens = TokenAuthority(secret)

    def mint(user: str, rooms: dict[str, str]) -> str:
        return tokens.mint(user, name=f"bench {user[:8]}", rooms=rooms, ttl_seconds=6 * 3600)

    return mint


async def run_once(
    options: argparse.Namespace, kind: str, subscribers: int, progress: Progress
) -> dict[str, Any]:
    """One measurement of one server kind at one size; every phase is bounded in time."""
    server = None
    workers = None
    label = f"{kind} S={subscribers}"
    result: dict[str, Any] = {
        "server": kind,
        "meetings": options.meetings,
        "publishers": options.publishers,
        "subscribers": subscribers,
        "decoders": min(options.decoders, subscribers),
        "duration_s": options.duration,
        "load_before": list(os.getloadavg()),
    }
    try:
        if kind == "sfu" and options.url:
            base_url, secret, pid = (
                options.url.rstrip("/"),
                options.token_secret,
                options.server_pid,
            )
            if not secret:
                raise SystemExit("--url needs --token-secret (the server's [auth] jwt_secret)")
        else:
            server = ServerProcess(kind, options.bitrate)
            progress.show(f"{label}: starting the server (pid {server.pid})")
            await server.wait_ready()
            base_url, secret, pid = server.url, server.secret, server.pid
        result["server_pid"] = pid
        specs = await create_meetings(
            base_url,
            make_authority(secret),
            options.meetings,
            options.publishers,
            subscribers,
            options,
        )
        n_pub = sum(1 for s in specs if s.role == "publisher")
        n_sub = len(specs) - n_pub
        processes = options.processes or (1 if len(specs) <= 12 else 2)
        result["client_processes"] = processes
        settings = {
            "bitrate": options.bitrate,
            "width": options.width,
            "height": options.height,
            "fps": options.fps,
            "timeout": options.setup_timeout,
            "concurrency": options.concurrency,
        }
        workers = Workers(base_url, specs, processes, settings)
        errors: list[str] = []

        async def phase(cmd: str, expected: int, what: str) -> int:
            workers.send(cmd)
            ready = 0
            answered = 0
            deadline = time.monotonic() + options.setup_timeout + 30 + expected * 0.5
            while answered < expected and time.monotonic() < deadline:
                progress.show(f"{label}: {what} ready {ready}/{expected}")
                rep = await workers.report(0.5)
                if rep is None:
                    continue
                if rep[0] == "fatal":
                    raise RuntimeError(f"client process {rep[1]} failed: {rep[2]}")
                if rep[0] == "ready":
                    answered += 1
                    if rep[3] is None:
                        ready += 1
                    elif len(errors) < 20:
                        errors.append(f"{rep[2]}: {rep[3]}")
            progress.show(f"{label}: {what} ready {ready}/{expected}")
            return ready

        setup_t0 = time.monotonic()
        result["publishers_ready"] = await phase("publishers", n_pub, "publishers")
        if result["publishers_ready"] == 0:
            raise RuntimeError(f"no publisher could publish: {errors[:3]}")
        result["subscribers_ready"] = await phase("subscribers", n_sub, "subscribers")
        result["setup_s"] = round(time.monotonic() - setup_t0, 2)

        warm_end = time.monotonic() + options.warmup
        while time.monotonic() < warm_end:
            progress.bar(
                f"{label}: warm-up", options.warmup - (warm_end - time.monotonic()), options.warmup
            )
            await asyncio.sleep(0.25)

        workers.send("mark")
        marked = 0
        for _ in range(len(workers.procs) * 40):
            if marked == len(workers.procs):
                break
            rep = await workers.report(0.5)
            if rep is not None and rep[0] == "marked":
                marked += 1
        host0 = host_cpu()
        cpu0, t0 = proc_cpu(pid) if pid else (None, None), time.monotonic()
        end = t0 + options.duration
        while time.monotonic() < end:
            now = time.monotonic()
            extra = ""
            if pid and cpu0[0] is not None and now > t0 + 0.5:
                u, s = proc_cpu(pid)
                extra = f"server {(u + s - cpu0[0] - cpu0[1]) / (now - t0):.2f} cores"
            progress.bar(f"{label}: measuring", now - t0, options.duration, extra)
            await asyncio.sleep(min(0.5, max(0.0, end - now)))
        cpu1, t1 = proc_cpu(pid) if pid else (None, None), time.monotonic()
        host1 = host_cpu()
        rss, hwm = proc_rss_mb(pid) if pid else (None, None)
        workers.send("end")
        results = []
        for _ in range(len(workers.procs) * 120):
            if len(results) == len(workers.procs):
                break
            rep = await workers.report(0.5)
            if rep is not None and rep[0] == "result":
                results.append(rep[2])
        progress.done()
        window = t1 - t0
        result.update(_aggregate(results, window, subscribers, options))
        if cpu0[0] is not None:
            user = (cpu1[0] - cpu0[0]) / window
            system = (cpu1[1] - cpu0[1]) / window
            result["server_cpu_cores"] = _r(user + system, 3)
            result["server_cpu_user_cores"] = _r(user, 3)
            result["server_cpu_sys_cores"] = _r(system, 3)
            pkts = result["forwarded_pps"] * window
            result["cpu_us_per_packet"] = (
                _r((user + system) * window / pkts * 1e6, 1) if pkts else None
            )
        else:
            result.update(
                {
                    "server_cpu_cores": None,
                    "server_cpu_user_cores": None,
                    "server_cpu_sys_cores": None,
                    "cpu_us_per_packet": None,
                }
            )
        # The whole machine's busy cores in the window, and what neither the server nor the
        # bench's clients used (other work on a shared machine skews every figure).
        host = (host1[0] - host0[0]) / max(1, host1[1] - host0[1]) * (os.cpu_count() or 1)
        result["host_busy_cores"] = _r(host, 2)
        result["host_other_cores"] = _r(
            max(0.0, host - (result["server_cpu_cores"] or 0) - (result["client_cpu_cores"] or 0)),
            2,
        )
        result["server_rss_mb"] = _r(rss, 1)
        result["server_rss_peak_mb"] = _r(hwm, 1)
        result["window_s"] = round(window, 2)
        result["setup_errors"] = errors
        result["load_after"] = list(os.getloadavg())
        return result
    finally:
        progress.done()
        if workers is not None:
            await workers.stop()
        if server is not None:
            server.stop()


def _aggregate(
    results: list[dict[str, Any]], window: float, subscribers: int, options: argparse.Namespace
) -> dict[str, Any]:
    clients = [c for r in results for c in r["clients"]]
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
    arrivals = 0
    errors: list[str] = []
    audio_pps = 0.0
    for c in clients:
        errors += c["errors"]
        span = max(1e-3, c["end"]["at"] - c["start"]["at"])
        audio_pps += (c["end"]["audio_packets"] - c["start"]["audio_packets"]) / span
        if c["spec"]["role"] != "subscriber":
            continue
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
    cpu_s = sum(r["cpu_s"] for r in results)
    return {
        "subscriber_streams": len(fps),
        "forwarded_pps": round(pps, 1),
        "forwarded_bps": round(bps),
        "audio_mix_pps": round(audio_pps, 1),
        "fps_min": _r(min(fps) if fps else None),
        "fps_mean": _r(sum(fps) / len(fps) if fps else None),
        "decoded_fps_min": _r(min(decoded_fps) if decoded_fps else None),
        "decoded_fps_mean": _r(sum(decoded_fps) / len(decoded_fps) if decoded_fps else None),
        "loss_percent": _r(100 * lost / expected if expected else None, 3),
        "join_to_first_frame_ms": {
            "p50": _r(pct(first_frame, 50), 1),
            "p95": _r(pct(first_frame, 95), 1),
            "samples": len(first_frame),
        },
        "latency_forward_ms": {
            "p50": _r(pct(forward, 50)),
            "p95": _r(pct(forward, 95)),
            "samples": len(forward),
            "frames": arrivals,
        },
        "latency_e2e_ms": {
            "p50": _r(pct(e2e, 50), 1),
            "p95": _r(pct(e2e, 95), 1),
            "samples": len(e2e),
        },
        "client_cpu_cores": _r(cpu_s / window, 3),
        "client_errors": errors[:20],
    }


# --- report -----------------------------------------------------------------------------------


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


# --- command line -----------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's default (when it has one to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


EPILOG = """\
environment:
  The server the bench starts gets its settings as MEETING_SFU_* variables (a free
  port on 127.0.0.1, a temporary data directory, a generated JWT secret, ICE on
  127.0.0.1, log level warning); the caller's other MEETING_SFU_* variables reach
  it too. See bench/README.md for every measured field."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meeting-sfu bench",
        description=textwrap.fill(__doc__.split("\n\n")[0].replace("\n", " "), 78),
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--meetings", "-m", type=int, default=1, help="meetings at once")
    p.add_argument("--publishers", "-p", type=int, default=1, help="publishers per meeting")
    p.add_argument("--subscribers", "-s", type=int, default=5, help="subscribers per meeting")
    p.add_argument("--sweep", help="comma-separated subscriber counts, one run each (replaces --subscribers)")
    p.add_argument("--duration", "-d", type=float, default=10.0, help="measuring window, s")
    p.add_argument("--warmup", type=float, default=3.0, help="s between set-up and window")
    p.add_argument(
        "--decoders",
        type=int,
        default=2,
        help="subscribers per meeting that decode video; the others are light",
    )
    p.add_argument(
        "--audio",
        action="store_true",
        help="every client also opens the audio PC (publishers send a tone)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="client processes (0: 1 up to 12 clients, else 2)",
    )
    p.add_argument("--concurrency", type=int, default=8, help="client set-ups at once per process")
    p.add_argument("--bitrate", type=int, default=1_200_000, help="VP8 start bitrate, bit/s")
    p.add_argument("--width", type=int, default=640, help="video width, pixels")
    p.add_argument("--height", type=int, default=480, help="video height, pixels")
    p.add_argument("--fps", type=int, default=30, help="video frames per second")
    p.add_argument("--setup-timeout", type=float, default=20.0, help="per client, s")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also measure the naive MediaRelay server at each size",
    )
    p.add_argument("--baseline-only", action="store_true", help="measure only the baseline")
    p.add_argument("--url", help="a running server (default: meeting-sfu serve is started)")
    p.add_argument("--token-secret", help="the running server's JWT secret (with --url)")
    p.add_argument("--server-pid", type=int, help="the running server's PID, for CPU and RSS")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument(
        "--readme", metavar="FILE", help="write the results table into FILE (e.g. README.md)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


async def run(options: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(x) for x in options.sweep.split(",")] if options.sweep else [options.subscribers]
    kinds = (
        ["baseline"]
        if options.baseline_only
        else (["sfu", "baseline"] if options.baseline else ["sfu"])
    )
    progress = Progress(not options.quiet)
    started = time.time()
    runs = []
    for size in sizes:
        for kind in kinds:
            try:
                runs.append(await run_once(options, kind, size, progress))
            except (RuntimeError, OSError) as exc:
                progress.done()
                print(f"bench: {kind} S={size} failed: {exc}", file=sys.stderr)
                runs.append(
                    {
                        "server": kind,
                        "subscribers": size,
                        "meetings": options.meetings,
                        "publishers": options.publishers,
                        "failed": str(exc),
                    }
                )
    ok = [r for r in runs if "failed" not in r]
    return {
        "bench": "meeting-sfu load",
        "command": ["meeting-sfu", "bench", *options.argv],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "host": {"cpus": os.cpu_count(), "load_at_start": None},
        "settings": {
            "meetings": options.meetings,
            "publishers": options.publishers,
            "sizes": sizes,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "decoders": options.decoders,
            "audio": options.audio,
            "bitrate": options.bitrate,
            "video": f"VP8 {options.width}x{options.height} {options.fps} fps",
        },
        "runs": runs,
        "ratios": ratios(ok),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parser().parse_args(argv)
    options.argv = argv
    if options.publishers < 1 or options.meetings < 1:
        print("bench: at least one meeting and one publisher", file=sys.stderr)
        return 2
    load = list(os.getloadavg())
    report = asyncio.run(run(options))
    report["host"]["load_at_start"] = load
    ok = [r for r in report["runs"] if "failed" not in r]
    print(table(ok, report["ratios"]))
    print(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")
    if options.json:
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    if options.readme:
        from .readme import write

        write(Path(options.readme), [report])
    return 0 if ok and len(ok) == len(report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
