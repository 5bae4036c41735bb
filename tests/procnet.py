"""Which UDP sockets a set of processes holds, read from /proc (Linux): each process's socket
file descriptors resolved against its network namespace's /proc/<pid>/net/udp and udp6."""

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


__all__ = ["udp_sockets"]
