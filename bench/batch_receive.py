"""Light subscribers' sockets read in batches: recvmmsg(2) every few ms, headers counted with numpy.

A light subscriber only counts the SRTP packets the server sends it, by their clear header. Read
through the event loop, every datagram costs a wake-up, a read system call and a Python call
(about 20 us per packet in a client process, more than the server spends forwarding it). Here a
process of light subscribers takes its ICE sockets out of the event loop (`pause_reading`: no
epoll wake-up per datagram either, for the server's sends as for us), and every `period` s reads
all that each socket holds with one recvmmsg(2) call into one shared buffer, then counts the RTP
packets of the whole batch with numpy: packets, bytes, frames (marker bits) and sequence numbers
into each stream's `StreamCounter`, as the per-datagram path does. Everything that is not RTP
(STUN consent checks, RTCP, DTLS) goes to the ICE socket's own protocol as before.

Linux only (recvmmsg, IPv4 loopback candidates).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import socket
import time
from typing import Any

import numpy as np

MSG_DONTWAIT = 0x40
SLOT = 1536  # bytes per datagram slot: above any SRTP packet the server sends (its MTU is 1200)
NAME = 16  # sizeof(struct sockaddr_in)
PER_CALL = 256  # datagrams per recvmmsg call at most
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


class _Socket:
    __slots__ = ("counters", "fd", "protocol", "transport")

    def __init__(self, transport: Any, protocol: Any, counters: dict[int, Any]) -> None:
        self.transport = transport
        self.protocol = protocol
        self.counters = counters
        self.fd = transport.get_extra_info("socket").fileno()


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
        self.sockets: list[_Socket] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.datagrams = 0
        self.slow_groups = 0  # groups counted packet by packet
        self.rtcp_dropped = 0
        self.closed = 0  # sockets whose peer connection closed (no longer read)

    def add(self, transport: Any, protocol: Any, counters: dict[int, Any]) -> None:
        """Take an ICE socket out of the event loop; its RTP is counted into `counters`
        (media SSRC -> StreamCounter), everything else goes to `protocol.datagram_received`."""
        transport.pause_reading()
        try:
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass  # the default buffer holds a few periods' packets too
        self.sockets.append(_Socket(transport, protocol, counters))
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self.sockets:
            await asyncio.sleep(self.period)
            self.drain()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def drain(self) -> None:
        """Read and count what every socket holds now."""
        for _ in range(16):  # bounded: a full buffer is read again, 16 times at most
            if not self._read_all():
                return

    def _read_all(self) -> bool:
        pos = 0
        live: list[_Socket] = []
        runs: list[int] = []  # datagrams read from each live socket
        full = False
        base, size = self._base, self._size
        for sock in self.sockets:
            if sock.transport.is_closing():  # its fd is about to be closed: never read it again
                self.closed += 1
                continue
            live.append(sock)
            got = 0
            while True:
                room = min(PER_CALL, self.capacity - pos)
                if room <= 0:
                    full = True
                    break
                n = _recvmmsg(sock.fd, base + pos * size, room, MSG_DONTWAIT, None)
                if n <= 0:
                    break
                pos += n
                got += n
                if n < room:
                    break
            runs.append(got)
        self.sockets = live
        if pos:
            owner = np.repeat(np.arange(len(runs)), runs)
            self._count(pos, owner)
            self._namelens[:pos] = NAME
        return full

    def _count(self, n: int, owner_of_slot: np.ndarray) -> None:
        self.batches += 1
        self.datagrams += n
        data = self.data[:n]
        lens = self._lens[:n]
        b0, b1 = data[:, 0], data[:, 1]
        # RFC 7983: 128..191 is RTP or RTCP; RTCP packet types are 192..223.
        rtp_or_rtcp = (b0 >= 128) & (b0 <= 191)
        rtcp = rtp_or_rtcp & (b1 >= 192) & (b1 <= 223)
        rtp = rtp_or_rtcp & ~rtcp & (lens >= 12)
        # The server's RTCP (sender reports) is counted and dropped: a light subscriber has no
        # use for it, and aiortc's handling (SRTCP, parsing, statistics) costs more than all of
        # its RTP. STUN (consent) and DTLS go to the ICE connection.
        self.rtcp_dropped += int(rtcp.sum())
        other = ~(rtp | rtcp)
        if other.any():
            for i in np.flatnonzero(other).tolist():
                self._dispatch(i, int(owner_of_slot[i]))
        slots = np.flatnonzero(rtp)
        if not slots.size:
            return
        hdr = data[slots, :12].astype(np.int64)
        ssrc = (hdr[:, 8] << 24) | (hdr[:, 9] << 16) | (hdr[:, 10] << 8) | hdr[:, 11]
        seq = (hdr[:, 2] << 8) | hdr[:, 3]
        marker = hdr[:, 1] >> 7
        size = lens[slots].astype(np.int64)
        owner = owner_of_slot[slots]
        # Groups of one (socket, SSRC), arrival order kept inside each group (a socket's
        # datagrams are contiguous; a stable sort only interleaves several SSRCs of one PC).
        key = owner * (1 << 32) + ssrc
        if key.size > 1 and (key[1:] < key[:-1]).any():
            order = np.argsort(key, kind="stable")
            key, seq, marker, size, owner, ssrc = (a[order] for a in (key, seq, marker, size, owner, ssrc))
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        last = np.r_[starts[1:], key.size] - 1
        # Per group, in one pass: packets, bytes, frames, and the sequence steps inside it
        # (their sum, and whether each one goes forward by 1..0x7fff).
        steps = np.r_[(seq[1:] - seq[:-1]) & 0xFFFF, 1]
        steps[last] = 1  # a group's last packet has no step inside the group
        backward = (steps == 0) | (steps >= 0x8000)
        step_sum = np.add.reduceat(steps, starts) - 1  # without the padding step
        bad = np.add.reduceat(backward, starts)
        byte_sum = np.add.reduceat(size, starts)
        frame_sum = np.add.reduceat(marker, starts)
        counts = np.diff(np.r_[starts, key.size])
        rows = zip(
            starts.tolist(), last.tolist(), owner[starts].tolist(), ssrc[starts].tolist(),
            seq[starts].tolist(), seq[last].tolist(), step_sum.tolist(), bad.tolist(),
            byte_sum.tolist(), frame_sum.tolist(), counts.tolist(), strict=True,
        )
        sockets = self.sockets
        for s, e, o, x, first, final, inner, nbad, nbytes, nframes, npk in rows:
            counter = sockets[o].counters.get(x)
            if counter is None:
                continue
            jump = (first - counter.last_seq) & 0xFFFF
            if nbad or counter.last_seq < 0 or counter.first_frame_at is None or not 0 < jump < 0x8000:
                # Out of order, repeated, or the stream's first packets: packet by packet.
                self.slow_groups += 1
                now = time.time()
                for j in range(s, e + 1):
                    counter.add(int(seq[j]), int(size[j]), bool(marker[j]), now)
                continue
            # In order: the extended sequence number advances by every step.
            counter.packets += npk
            counter.bytes += nbytes
            counter.frames += nframes
            counter.max_ext += jump + inner
            counter.cycles = counter.max_ext >> 16
            counter.last_seq = final

    def _dispatch(self, i: int, owner: int) -> None:
        sock = self.sockets[owner]
        name = self.names[i]
        addr = (socket.inet_ntoa(name[4:8].tobytes()), (int(name[2]) << 8) | int(name[3]))
        try:
            sock.protocol.datagram_received(self.data[i, : int(self._lens[i])].tobytes(), addr)
        except Exception:  # one bad datagram never stops the batch (as in the event loop)
            pass

