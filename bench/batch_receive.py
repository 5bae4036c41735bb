"""Light subscribers' sockets read in batches: recvmmsg(2) every few ms, headers counted with numpy.

A light subscriber only counts the SRTP packets the server sends it, by their clear header. Read
through the event loop, every datagram costs a wake-up, a read system call and a Python call
(about 20 us per packet in a client process, more than the server spends forwarding it). Here a
process of light subscribers takes its ICE sockets out of the event loop (`pause_reading`: no
epoll wake-up per datagram either, for the server's sends as for us), and every `period` s reads
all that each socket holds with one recvmmsg(2) call per socket into one shared buffer, then counts
the RTP packets of the whole batch at once with numpy.

What the kernel copies is only the head of each datagram (`SLOT` bytes: an RTP header, or a whole
STUN message); MSG_TRUNC makes it report every datagram's real length all the same. The counters of
the streams being read live in arrays (`StreamTable`), one row per (socket, media SSRC): a batch
in sequence order updates them with a few array operations whatever the number of streams; a
stream whose batch is out of order, repeated, or its first, goes packet by packet through
`StreamCounter.add`, so both paths count alike. `drain()` writes the rows back to the clients'
`StreamCounter`s (the worker drains before each snapshot).

Everything that is not RTP (STUN consent checks, DTLS) goes to the ICE socket's own protocol as
before, but for the server's RTCP (sender reports), counted and dropped.

A socket added `in_kernel` is not even read for its RTP: a classic BPF socket filter
(`attach_rtp_drop_filter`) drops every RTP datagram on arrival, before it is queued, and the
kernel's per-socket drop counter (the `drops` column of /proc/net/udp) counts them. Such a
subscriber costs the load generator nothing per packet (no copy, no system call): it has a packet
count but no frame count nor sequence numbers, so its loss is its deficit against the subscribers
of its meeting that read every packet (bench/aggregate.py). STUN, DTLS and RTCP still reach the
socket and are read here as for any other.

Linux only (recvmmsg, MSG_TRUNC on UDP, IPv4 loopback candidates).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hmac
import os
import socket
import struct
import time
import zlib
from typing import Any

import numpy as np

MSG_TRUNC = 0x20
MSG_DONTWAIT = 0x40
SLOT = 256  # bytes kept per datagram: RTP's fixed header, or a whole STUN consent check
NAME = 16  # sizeof(struct sockaddr_in)
PER_CALL = 1024  # datagrams per recvmmsg call at most
RCVBUF = 1 << 20  # per socket: room for a keyframe burst plus a period's stream


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint32)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int


SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>
_BPF_LD_B_ABS, _BPF_JGE_K, _BPF_JGT_K, _BPF_RET_K = 0x30, 0x35, 0x25, 0x06
# On a UDP socket the filter sees the datagram from its UDP header: the payload starts at 8.
# RFC 7983: a first byte of 128..191 is RTP or RTCP, and RTCP's packet type (the second byte)
# is 192..223. RTP is dropped; everything else is accepted whole.
_RTP_DROP_PROGRAM = (
    (_BPF_LD_B_ABS, 0, 0, 8),  # 0: A = payload[0]
    (_BPF_JGE_K, 0, 4, 128),  # 1: < 128 (STUN, DTLS): accept
    (_BPF_JGT_K, 3, 0, 191),  # 2: > 191: accept
    (_BPF_LD_B_ABS, 0, 0, 9),  # 3: A = payload[1]
    (_BPF_JGE_K, 0, 2, 192),  # 4: < 192: RTP, drop
    (_BPF_JGT_K, 1, 0, 223),  # 5: > 223: RTP (a marker bit and a high payload type), drop
    (_BPF_RET_K, 0, 0, 0xFFFFFFFF),  # 6: accept
    (_BPF_RET_K, 0, 0, 0),  # 7: drop
)


def attach_rtp_drop_filter(sock: socket.socket) -> None:
    """Drop every RTP datagram `sock` receives in the kernel, counted in its `drops`."""
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in _RTP_DROP_PROGRAM))
    # struct sock_fprog: the kernel copies the program during the call, so the buffer may go.
    fprog = struct.pack("HL", len(_RTP_DROP_PROGRAM), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def udp_drops(path: str = "/proc/net/udp") -> dict[int, int]:
    """Socket inode -> datagrams the kernel dropped for it (filtered or with a full buffer)."""
    out: dict[int, int] = {}
    with open(path) as f:
        next(f, None)  # the header line
        for line in f:
            fields = line.split()
            if len(fields) >= 13:
                out[int(fields[9])] = int(fields[-1])
    return out


class StreamTable:
    """Counters of many streams as arrays, one row per (socket, media SSRC), each row bound to
    a `StreamCounter` (the packet-by-packet reference, and what the clients snapshot)."""

    FIELDS = ("packets", "bytes", "frames", "first_ext", "max_ext", "last_seq")

    def __init__(self) -> None:
        self.counters: list[Any] = []
        self.keys = np.zeros(0, np.int64)  # sorted (socket << 32 | ssrc)
        self.rows = np.zeros(0, np.int64)  # row of each sorted key
        self.framed = np.zeros(0, bool)  # the stream's first frame was seen
        for name in self.FIELDS:
            setattr(self, name, np.zeros(0, np.int64))
        self._keys: list[int] = []

    def __len__(self) -> int:
        return len(self.counters)

    def add(self, sock: int, ssrc: int, counter: Any) -> None:
        self.counters.append(counter)
        self._keys.append((sock << 32) | ssrc)
        for name in self.FIELDS:
            setattr(self, name, np.append(getattr(self, name), 0))
        self.framed = np.append(self.framed, False)
        self.load(len(self.counters) - 1)
        keys = np.array(self._keys, np.int64)
        self.rows = np.argsort(keys, kind="stable")
        self.keys = keys[self.rows]

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 for keys of no stream."""
        if not self.keys.size:
            return np.full(keys.size, -1, np.int64)
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return np.where(self.keys[at] == keys, self.rows[at], -1)

    def load(self, row: int) -> None:
        """Row <- its counter."""
        c = self.counters[row]
        for name in self.FIELDS:
            getattr(self, name)[row] = getattr(c, name)
        self.framed[row] = c.first_frame_at is not None

    def store(self, row: int) -> Any:
        """Counter <- its row."""
        c = self.counters[row]
        c.packets, c.bytes, c.frames, c.first_ext, c.max_ext, c.last_seq = (
            int(getattr(self, name)[row]) for name in self.FIELDS
        )
        c.cycles = max(0, c.max_ext) >> 16
        return c

    def store_all(self) -> None:
        for row in range(len(self.counters)):
            self.store(row)


def count_rtp(
    table: StreamTable, seq: np.ndarray, marker: np.ndarray, size: np.ndarray, row: np.ndarray, now: float
) -> tuple[int, int]:
    """Count a batch of RTP packets (arrival order, each with its stream's row; no row: -1) into
    `table`; returns (packets of no stream, streams counted packet by packet)."""
    known = row >= 0
    unknown = int(row.size - np.count_nonzero(known))
    if unknown:
        seq, marker, size, row = seq[known], marker[known], size[known], row[known]
    if not row.size:
        return unknown, 0
    if row.size > 1 and (row[1:] < row[:-1]).any():
        order = np.argsort(row, kind="stable")  # groups by stream, arrival order kept in each
        seq, marker, size, row = seq[order], marker[order], size[order], row[order]
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    last = np.r_[starts[1:], row.size] - 1
    # Per stream, in one pass: packets, bytes, frames, and the sequence steps inside its batch
    # (their sum, and whether each one goes forward by 1..0x7fff).
    steps = np.r_[(seq[1:] - seq[:-1]) & 0xFFFF, 1]
    steps[last] = 1  # a stream's last packet has no step inside the batch
    backward = (steps == 0) | (steps >= 0x8000)
    inner = np.add.reduceat(steps, starts) - 1  # without the padding step
    bad = np.add.reduceat(backward, starts)
    r = row[starts]
    prev = table.last_seq[r]
    jump = (seq[starts] - prev) & 0xFFFF
    fast = (bad == 0) & (prev >= 0) & table.framed[r] & (jump > 0) & (jump < 0x8000)
    # In order after what was counted: the extended sequence number advances by every step.
    g = np.flatnonzero(fast)
    rf = r[g]  # distinct rows: plain fancy-index updates
    table.packets[rf] += np.diff(np.r_[starts, row.size])[g]
    table.bytes[rf] += np.add.reduceat(size, starts)[g]
    table.frames[rf] += np.add.reduceat(marker, starts)[g]
    table.max_ext[rf] += jump[g] + inner[g]
    table.last_seq[rf] = seq[last[g]]
    # Out of order, repeated, or a stream's first packets: packet by packet.
    slow = np.flatnonzero(~fast).tolist()
    for k in slow:
        rk = int(r[k])
        c = table.store(rk)
        s, e = int(starts[k]), int(last[k]) + 1
        for q, n, m in zip(seq[s:e].tolist(), size[s:e].tolist(), marker[s:e].tolist(), strict=True):
            c.add(q, n, bool(m), now)
        table.load(rk)
    return unknown, len(slow)


COOKIE = 0x2112A442  # STUN magic cookie (RFC 8489)
_ATTR = struct.Struct("!HH")


def binding_response(request: bytes, addr: tuple[str, int], password: bytes, controlled: bool) -> bytes | None:
    """The success response to an ICE consent check as aioice would send it (XOR-MAPPED-ADDRESS,
    MESSAGE-INTEGRITY with our password, FINGERPRINT), or None when `request` is anything else:
    not a Binding request from an IPv4 peer, not signed with our password, a role conflict (the
    ICE connection's own handling then answers). One HMAC and one CRC in place of aioice's
    message objects: about a tenth of its cost, once per ~5 s per subscriber."""
    if len(request) < 20 or request[:2] != b"\x00\x01" or int.from_bytes(request[4:8], "big") != COOKIE:
        return None
    end = min(len(request), 20 + int.from_bytes(request[2:4], "big"))
    same_role = 0x8029 if controlled else 0x802A  # ICE-CONTROLLED / ICE-CONTROLLING as we are
    pos, integrity, conflict = 20, -1, False
    while pos + 4 <= end and integrity < 0:  # bounded by the message length
        kind, size = _ATTR.unpack_from(request, pos)
        if kind == 0x0008 and size == 20:
            integrity = pos
        conflict = conflict or kind == same_role
        pos += 4 + (size + 3) // 4 * 4
    if integrity < 0 or conflict or pos > end:
        return None
    signed = request[:2] + (integrity + 24 - 20).to_bytes(2, "big") + request[4:integrity]
    if not hmac.compare_digest(hmac.digest(password, signed, "sha1"), request[integrity + 4 : integrity + 24]):
        return None
    try:
        ip = int.from_bytes(socket.inet_aton(addr[0]), "big")
    except OSError:
        return None
    mapped = struct.pack("!HHBBHI", 0x0020, 8, 0, 1, addr[1] ^ (COOKIE >> 16), ip ^ COOKIE)
    head = struct.pack("!HHI", 0x0101, len(mapped) + 24, COOKIE) + request[8:20]
    body = head + mapped + _ATTR.pack(0x0008, 20) + hmac.digest(password, head + mapped, "sha1")
    body = body[:2] + (len(body) - 20 + 8).to_bytes(2, "big") + body[4:]
    return body + struct.pack("!HHI", 0x8028, 4, zlib.crc32(body) ^ 0x5354554E)


class _Socket:
    __slots__ = ("counters", "drops", "fd", "inode", "known", "protocol", "transport")

    def __init__(self, transport: Any, protocol: Any, counters: dict[int, Any], in_kernel: bool) -> None:
        self.transport = transport
        self.protocol = protocol
        self.counters = counters  # the client's own dict: a later offer may add streams to it
        self.known: set[int] = set()  # its SSRCs that have a row
        self.fd = transport.get_extra_info("socket").fileno()
        self.inode = os.fstat(self.fd).st_ino if in_kernel else 0  # counted by the kernel
        self.drops = 0  # its RTP dropped by the filter, as of the last drain


class BatchReceiver:
    """The light subscribers' ICE sockets of one client process, read every `period` s."""

    def __init__(self, period: float, capacity: int = 8192) -> None:
        self.period = period
        self.capacity = capacity
        self.data = np.zeros((capacity, SLOT), np.uint8)
        self.names = np.zeros((capacity, NAME), np.uint8)
        self._iov = (_Iovec * capacity)()
        self._msgs = (_Mmsghdr * capacity)()
        data, names = self.data.ctypes.data, self.names.ctypes.data
        for i in range(capacity):
            self._iov[i].iov_base = data + i * SLOT
            self._iov[i].iov_len = SLOT
            m = self._msgs[i].msg_hdr
            m.msg_name = names + i * NAME
            m.msg_namelen = NAME
            m.msg_iov = ctypes.pointer(self._iov[i])
            m.msg_iovlen = 1
        self._base = ctypes.addressof(self._msgs)
        self._size = ctypes.sizeof(_Mmsghdr)
        words = np.ctypeslib.as_array(
            (ctypes.c_uint32 * (self._size * capacity // 4)).from_address(self._base)
        ).reshape(capacity, self._size // 4)
        self._lens = words[:, _Mmsghdr.msg_len.offset // 4]
        self._namelens = words[:, (_Mmsghdr.msg_hdr.offset + _Msghdr.msg_namelen.offset) // 4]
        self.sockets: list[_Socket | None] = []  # by id; None once closed (never read again)
        self._kernel: dict[int, _Socket] = {}  # id(protocol) -> its `in_kernel` socket
        self.streams = StreamTable()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.datagrams = 0
        self.slow_groups = 0  # streams' batches counted packet by packet
        self.unknown = 0  # RTP of no counted stream (RTX, streams of no counter)
        self.rtcp_dropped = 0
        self.truncated = 0  # datagrams other than RTP/RTCP longer than SLOT: dropped
        self.closed = 0  # sockets whose peer connection closed (no longer read)
        self.consent_answered = 0  # the server's consent checks answered here

    def add(self, transport: Any, protocol: Any, counters: dict[int, Any], in_kernel: bool = False) -> None:
        """Take an ICE socket out of the event loop; its RTP is counted into `counters`
        (media SSRC -> StreamCounter), or only by the kernel when `in_kernel` (see
        `kernel_datagrams`); everything else goes to `protocol.datagram_received`."""
        transport.pause_reading()
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass  # the default buffer holds a few periods' packets too
        if in_kernel:
            attach_rtp_drop_filter(sock)
        self.sockets.append(_Socket(transport, protocol, counters, in_kernel))
        if in_kernel:
            self._kernel[id(protocol)] = self.sockets[-1]
        self._rows_for(len(self.sockets) - 1)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def _rows_for(self, i: int) -> bool:
        """Rows for the streams of socket `i` that have none yet; whether there were any."""
        sock = self.sockets[i]
        new = [] if sock is None else [x for x in sock.counters if x not in sock.known]
        for ssrc in new:
            sock.known.add(ssrc)
            self.streams.add(i, ssrc, sock.counters[ssrc])
        return bool(new)

    async def _run(self) -> None:
        while any(s is not None for s in self.sockets):
            await asyncio.sleep(self.period)
            self._drain()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def drain(self) -> None:
        """Read and count what every socket holds now, and bring the clients' counters (and the
        kernel's counts of `in_kernel` sockets) up to date."""
        self._drain()
        self.streams.store_all()
        if self._kernel:
            drops = udp_drops()
            for s in self._kernel.values():
                s.drops = drops.get(s.inode, s.drops)

    def kernel_datagrams(self, protocols: list[Any]) -> int | None:
        """RTP datagrams the kernel dropped (counted) for these protocols' `in_kernel` sockets
        as of the last `drain`; None when none of them is counted in the kernel."""
        counted = [self._kernel[id(p)] for p in protocols if id(p) in self._kernel]
        return sum(s.drops for s in counted) if counted else None

    def _drain(self) -> None:
        for _ in range(16):  # bounded: a full buffer is read again, 16 times at most
            if not self._read_all():
                return

    def _read_all(self) -> bool:
        pos = 0
        ids: list[int] = []
        runs: list[int] = []  # datagrams read from each socket
        full = False
        base, size, capacity, recv = self._base, self._size, self.capacity, _recvmmsg
        flags = MSG_DONTWAIT | MSG_TRUNC
        for i, sock in enumerate(self.sockets):
            if sock is None:
                continue
            if sock.transport.is_closing():  # its fd is about to be closed: never read it again
                self.sockets[i] = None
                self._kernel.pop(id(sock.protocol), None)
                self.closed += 1
                continue
            got = 0
            while True:
                room = min(PER_CALL, capacity - pos)
                if room <= 0:
                    full = True
                    break
                n = recv(sock.fd, base + pos * size, room, flags, None)
                if n <= 0:
                    break
                pos += n
                got += n
                if n < room:
                    break
            if got:
                ids.append(i)
                runs.append(got)
        if pos:
            self._count(pos, np.repeat(np.array(ids, np.int64), runs))
            self._namelens[:pos] = NAME
        return full

    def _count(self, n: int, owner: np.ndarray) -> None:
        self.batches += 1
        self.datagrams += n
        head = np.ascontiguousarray(self.data[:n, :12])
        lens = self._lens[:n].astype(np.int64)  # real lengths (MSG_TRUNC)
        b0, b1 = head[:, 0], head[:, 1]
        # RFC 7983: 128..191 is RTP or RTCP; RTCP packet types are 192..223.
        rtp_or_rtcp = (b0 >= 128) & (b0 <= 191)
        rtcp = rtp_or_rtcp & (b1 >= 192) & (b1 <= 223)
        rtp = rtp_or_rtcp & ~rtcp & (lens >= 12)
        # The server's RTCP (sender reports) is counted and dropped: a light subscriber has no
        # use for it, and aiortc's handling (SRTCP, parsing, statistics) costs more than all of
        # its RTP. STUN (consent) and DTLS go to the ICE connection.
        self.rtcp_dropped += int(np.count_nonzero(rtcp))
        other = ~(rtp | rtcp)
        if other.any():
            for i in np.flatnonzero(other).tolist():
                self._dispatch(i, int(owner[i]))
        slots = np.flatnonzero(rtp)
        if not slots.size:
            return
        h = head[slots]
        seq = h[:, 2:4].copy().view(">u2")[:, 0].astype(np.int64)
        ssrc = h[:, 8:12].copy().view(">u4")[:, 0].astype(np.int64)
        marker = (h[:, 1] >> 7).astype(np.int64)
        key = (owner[slots] << 32) | ssrc
        row = self.streams.lookup(key)
        if (row < 0).any() and any([self._rows_for(i) for i in np.unique(owner[slots][row < 0]).tolist()]):
            row = self.streams.lookup(key)  # a client learnt a stream since its socket came here
        unknown, slow = count_rtp(self.streams, seq, marker, lens[slots], row, time.time())
        self.unknown += unknown
        self.slow_groups += slow

    def _dispatch(self, i: int, owner: int) -> None:
        sock = self.sockets[owner]
        length = int(self._lens[i])
        if sock is None:
            return
        if length > SLOT:  # only its head was read (no STUN check is this long)
            self.truncated += 1
            return
        name = self.names[i]
        addr = (socket.inet_ntoa(name[4:8].tobytes()), (int(name[2]) << 8) | int(name[3]))
        data = self.data[i, :length].tobytes()
        connection = getattr(sock.protocol, "receiver", None)  # aioice's ICE connection
        if data[0] < 2 and connection is not None and connection.local_password:
            answer = binding_response(
                data, addr, connection.local_password.encode(), not connection.ice_controlling
            )
            if answer is not None:
                self.consent_answered += 1
                sock.transport.sendto(answer, addr)
                return
        try:
            sock.protocol.datagram_received(data, addr)
        except Exception:  # one bad datagram never stops the batch (as in the event loop)
            pass
