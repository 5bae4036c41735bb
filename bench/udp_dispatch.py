"""Micro-bench: the cost of handing one received SRTP datagram to its ICE connection.

Before the shared socket, each PC's socket handed every datagram to aioice's
`StunProtocol.datagram_received`, which tries to parse it as STUN (a raised ValueError for each
media packet) before queueing it. With the shared socket, `sfu.udp_mux.UdpMux` looks the remote
address up and queues DTLS/SRTP directly (STUN alone is parsed). Both are measured here with the
same stand-in connection, so only the dispatch differs; the socket read itself is the same.

    .venv/bin/python -m bench.udp_dispatch
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
import timeit


class _Connection:
    """Stands in for aioice.Connection: what it is handed is dropped."""

    def data_received(self, data: bytes, component: int) -> None:
        pass

    def request_received(self, *args: object) -> None:
        pass


async def measure(number: int, repeat: int) -> dict[str, float]:
    import aioice.ice
    from aioice import Candidate

    from sfu.udp_mux import UdpMux

    connection = _Connection()
    addr = ("127.0.0.1", 40000)
    packet = bytes([0x80, 0x60]) + os.urandom(1198)  # an SRTP packet of a video stream

    per_pc = aioice.ice.StunProtocol(connection)  # type: ignore[arg-type]
    per_pc.local_candidate = Candidate("1", 1, "udp", 1, "127.0.0.1", 1, "host")

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    mux = UdpMux(sock)

    class Endpoint:
        component = 1
        deliver = connection.data_received

        def datagram_received(self, data: bytes, addr: object) -> None:
            pass

    endpoint = Endpoint()
    mux.attach("ufrag", endpoint)  # type: ignore[arg-type]
    mux.learn(addr, endpoint, verified=True)  # type: ignore[arg-type]
    for n in range(500):  # a busy process: many other connections' addresses in the table
        other = Endpoint()
        mux.attach(f"u{n}", other)  # type: ignore[arg-type]
        mux.learn(("127.0.0.1", 41000 + n), other, verified=True)  # type: ignore[arg-type]

    def best(fn: object) -> float:
        # CPU time of this process, not wall time: other processes on the machine do not count.
        times = timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)  # type: ignore[arg-type]
        return min(times) / number * 1e9

    per_pc_ns = best(lambda: per_pc.datagram_received(packet, addr))
    mux_ns = best(lambda: mux.datagram_received(packet, addr))
    direct_ns = best(lambda: connection.data_received(packet, 1))
    sock.close()
    return {
        "per_pc_socket_ns_per_datagram": round(per_pc_ns, 1),
        "shared_socket_ns_per_datagram": round(mux_ns, 1),
        "direct_call_ns": round(direct_ns, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.number, args.repeat)), indent=2))


if __name__ == "__main__":
    main()
