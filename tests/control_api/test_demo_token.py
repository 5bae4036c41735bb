"""/demo/token mints tokens for loopback clients only (DESIGN section 11): the peer address of
the TCP connection decides, IPv4-mapped IPv6 addresses included, and no header can claim it."""

from __future__ import annotations

import socket

import pytest
from aiohttp.test_utils import make_mocked_request

from control_api.demo import _from_loopback


class _Transport:
    """The connection a request came on: only its peer address matters here."""

    def __init__(self, peer: tuple | None) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default=None):  # noqa: ANN001, ANN201
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def _request(peer: str | None, headers: dict[str, str] | None = None):
    transport = _Transport(None if peer is None else (peer, 40000))
    return make_mocked_request("POST", "/demo/token", headers=headers or {}, transport=transport)


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.4.5.6", "::1", "::ffff:127.0.0.1", "::ffff:127.9.9.9"])
def test_loopback_peers_are_loopback(peer):
    assert _from_loopback(_request(peer))


@pytest.mark.parametrize(
    "peer",
    [
        "10.0.0.1",
        "192.0.2.1",
        "0.0.0.0",
        "::ffff:192.0.2.1",  # IPv4-mapped, not loopback
        "::ffff:10.1.2.3",
        "::ffff:0.0.0.0",
        "::",
        "2001:db8::1",
        "fe80::1%eth0",
        "::127.0.0.1",  # IPv4-compatible (deprecated): not the loopback
        "localhost",  # not an address
        "",
        None,  # a unix socket
    ],
)
def test_other_peers_are_not(peer):
    assert not _from_loopback(_request(peer))


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "127.0.0.1"},
        {"X-Forwarded-For": "::1"},
        {"Forwarded": "for=127.0.0.1"},
        {"Forwarded": 'for="[::1]"'},
        {"X-Real-IP": "127.0.0.1"},
        {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"},
    ],
)
def test_headers_cannot_claim_loopback_for_a_remote_peer(headers):
    assert not _from_loopback(_request("192.0.2.1", headers))
    assert not _from_loopback(_request("::ffff:192.0.2.1", headers))


@pytest.mark.parametrize("headers", [{"X-Forwarded-For": "192.0.2.1"}, {"Forwarded": "for=192.0.2.1"}])
def test_a_proxied_request_from_loopback_is_not_loopback(headers):
    # The node behind a reverse proxy on the same host: every client would look local.
    assert not _from_loopback(_request("127.0.0.1", headers))


async def test_real_server_refuses_spoofed_headers_and_serves_loopback(server):
    for headers in ({"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}):
        status, body = await server.call("POST", "/demo/token", json={}, headers=headers)
        assert status == 403 and body["error"] == "forbidden", (headers, body)
    status, body = await server.call("POST", "/demo/token", json={})
    assert status == 200 and body["token"]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 here")
async def test_dual_stack_socket_sees_ipv4_mapped_loopback(server):
    """A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d: loopback still counts."""
    from aiohttp import ClientSession, web

    sock = socket.socket(socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::ffff:127.0.0.1", 0))  # an IPv6 socket taking IPv4 loopback clients only
    site = web.SockSite(server.runner, sock)
    await site.start()
    try:
        port = sock.getsockname()[1]
        async with ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/demo/token", json={}) as r:
                assert r.status == 200
    finally:
        await site.stop()
