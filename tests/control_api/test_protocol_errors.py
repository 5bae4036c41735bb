"""Requests aiohttp's parser rejects before the application still get a JSON error body."""

import asyncio
import json
import logging
import time

import pytest

from tests.helpers import start_server

BAD_REQUESTS = [
    b"GET /meetings HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",  # control byte in a header
    b"G@T /meetings HTTP/1.1\r\nHost: x\r\n\r\n",  # not a method token
    b"GET /meetings HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",  # header too big
    b"GET /meetings HTTP/9.9x\r\nHost: x\r\n\r\n",  # not an HTTP version
]


@pytest.mark.parametrize("raw", BAD_REQUESTS, ids=["ctl-byte", "method", "big-header", "version"])
async def test_parser_errors_are_json(server, raw):
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert 400 <= status < 500
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers[b"Content-Type"] == b"application/json"  # exactly (DESIGN section 10)
    assert json.loads(body) == {"error": "bad_request", "message": "malformed HTTP request"}


async def _exchange(server, raw: bytes) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_a_burst_of_malformed_requests_logs_a_line_per_kind(server, caplog):
    """1,000 bad requests (oversized headers and the other kinds): each answered with a JSON
    400, and the log gets one short line per kind, no traceback (DESIGN section 8, issue 14)."""
    caplog.set_level(logging.DEBUG)
    for start in range(0, 1000, 50):
        answers = await asyncio.gather(
            *(_exchange(server, BAD_REQUESTS[i % len(BAD_REQUESTS)]) for i in range(start, start + 50))
        )
        assert {a.split(b" ", 2)[1] for a in answers} == {b"400"}
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "meeting_sfu"))]
    print(f"1000 malformed requests: {len(records)} log lines, {sum(len(r.getMessage()) for r in records)} bytes")
    assert len(records) <= len(BAD_REQUESTS), [r.getMessage() for r in records]
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR]
    assert sum(len(r.getMessage()) for r in records) < 100 * len(BAD_REQUESTS)


def test_rate_limited_log_counts_what_it_suppressed(caplog):
    from control_api.runner import RateLimitedLog

    caplog.set_level(logging.INFO)
    limited = RateLimitedLog(logging.getLogger("meeting_sfu.test"), interval=0.2)
    for _ in range(100):
        limited.log(logging.INFO, "a", "kind a")
        limited.log(logging.INFO, "b", "kind b")
    time.sleep(0.25)
    limited.log(logging.INFO, "a", "kind a")
    assert [r.getMessage() for r in caplog.records] == ["kind a", "kind b", "kind a (99 similar suppressed)"]


async def test_slow_headers_are_cut_after_the_header_timeout(tmp_path):
    server = await start_server(tmp_path, server={"header_timeout_seconds": 0.5})
    host, port = server.url.removeprefix("http://").split(":")
    try:
        # A slowloris client: a header line every 100 ms, for ever.
        reader, writer = await asyncio.open_connection(host, int(port))
        opened = time.monotonic()
        writer.write(b"GET /meetings HTTP/1.1\r\nHost: x\r\n")
        closed_after = None
        for i in range(40):
            await asyncio.sleep(0.1)
            if reader.at_eof() or writer.is_closing():
                break
            try:
                writer.write(b"X-%d: a\r\n" % i)
                await writer.drain()
            except ConnectionError:
                break
            try:
                if await asyncio.wait_for(reader.read(1), 0.01) == b"":
                    break
            except TimeoutError:
                pass
        closed_after = time.monotonic() - opened
        writer.close()
        assert closed_after < 2.0, closed_after
        # A connection that sends nothing is closed too.
        reader, writer = await asyncio.open_connection(host, int(port))
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
        # Honest clients: a head in two parts, then a keep-alive connection idle between
        # requests for longer than the timeout.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /meetings HTTP/1.1\r\n")
        await asyncio.sleep(0.2)
        writer.write(b"Host: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 3)).startswith(b"HTTP/1.1 401")
        writer.close()
        async with server.http.get(server.url + "/health") as r:
            first = r.status
        await asyncio.sleep(0.8)
        async with server.http.get(server.url + "/health") as r:
            assert (first, r.status) == (200, 200)
    finally:
        await server.stop()
