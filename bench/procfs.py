"""What the bench reads from /proc: CPU seconds and memory of a process tree, the host's CPU."""

from __future__ import annotations

import os


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
