"""Processes seen from /proc (Linux): which UDP sockets a set of them holds (each socket file
descriptor resolved against its network namespace's /proc/<pid>/net/udp and udp6), and a
process's children (a node's media workers)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable


def _inodes(pid: int) -> set[int]:
    out = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def _address(hex_address: str, family: int) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if family == socket.AF_INET:
        packed = raw[::-1]  # one little-endian 32-bit word
    else:
        packed = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(family, packed), int(port, 16)


def _udp_table(pid: int) -> dict[int, tuple[str, int]]:
    table = {}
    for name, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{name}") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            table[int(fields[9])] = _address(fields[1], family)
    return table


def udp_sockets(pids: Iterable[int]) -> list[tuple[str, int]]:
    """The local (address, port) of every UDP socket the processes hold, one entry per socket
    (a socket shared by two of the processes counts once)."""
    inodes: dict[int, tuple[str, int]] = {}
    for pid in pids:
        table = _udp_table(pid)
        for inode in _inodes(pid):
            if inode in table:
                inodes[inode] = table[inode]
    return sorted(inodes.values())




def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def child_pids(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (a node's media workers)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields is not None and int(fields[1]) == pid:
                out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


__all__ = ["alive", "child_pids", "udp_sockets"]
