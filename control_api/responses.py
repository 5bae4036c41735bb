"""JSON responses with `Content-Type: application/json` exactly, without a charset parameter.

DESIGN section 10: the Carbonio web client parses a body as JSON only when its content type is
that very string (aiohttp's `json_response` appends `; charset=utf-8`). The body is ASCII, so
nothing is lost by leaving the charset out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

JSON = "application/json"


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    body = json.dumps(data, separators=(",", ":")).encode("ascii")
    # A bytes body with no charset given: aiohttp writes the content type as it is.
    return web.Response(body=body, status=status, headers=headers, content_type=JSON)
