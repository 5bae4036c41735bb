"""Requests aiohttp's parser rejects before the application still get a JSON error body."""

import asyncio
import json

import pytest

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
