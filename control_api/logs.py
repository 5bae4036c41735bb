"""Log lines: one per event, as key=value pairs or as one JSON object.

By convention a message is a short text followed by key=value fields
(`log.info("meeting created meeting=%s room=%s", ...)`): both formats split it, so the fields are
keys of their own (`msg='meeting created' meeting=... room=...`, `{"msg": "meeting created",
"meeting": ...}`), not one string to parse again.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# A field: key=value, the value bare or quoted as repr() quotes it.
_FIELD = re.compile(r"""\s([A-Za-z_][\w.]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")
# aioice/aiortc say at info what every candidate pair and connection does: half of all lines.
CHATTY = ("aioice", "aiortc")


def split_fields(message: str) -> tuple[str, dict[str, str]]:
    """("meeting created", {"meeting": "..."}) from "meeting created meeting=..."; a message
    whose tail is not made only of fields stays whole."""
    first = _FIELD.search(message)
    if first is None:
        return message, {}
    fields: dict[str, str] = {}
    pos = first.start()
    while pos < len(message):
        match = _FIELD.match(message, pos)
        if match is None:
            return message, {}
        value = match.group(2)
        if any(value.count(a) != value.count(b) for a, b in ("()", "[]", "{}")):
            return message, {}  # a repr() with spaces inside: not a field list
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        fields[match.group(1)] = value
        pos = match.end()
    return message[: first.start()], fields


def _base(record: logging.LogRecord) -> dict[str, Any]:
    return {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
        "level": record.levelname.lower(),
        "logger": record.name,
    }


class KeyValueFormatter(logging.Formatter):
    """ts=... level=... logger=... msg='...' key=value ..."""

    def format(self, record: logging.LogRecord) -> str:
        text, fields = split_fields(record.getMessage())
        parts = [f"{k}={v}" for k, v in _base(record).items()]
        parts.append(f"msg={text!r}")
        parts += [f"{k}={_kv(v)}" for k, v in fields.items() if k not in ("ts", "level", "logger", "msg")]
        if record.exc_info:
            parts.append("exc=" + repr(self.formatException(record.exc_info)))
        return " ".join(parts)


def _kv(value: str) -> str:
    return value if value and not any(c.isspace() or c in "'\"=" for c in value) else repr(value)


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", <fields>..., "exc"}: one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        text, fields = split_fields(record.getMessage())
        body = _base(record)
        body["msg"] = text
        for key, value in fields.items():
            body.setdefault(key, value)
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body)


def setup_logging(level: str, fmt: str) -> None:
    """Root logging to stderr at `level` ("debug", "info", ...) in `fmt` ("keyvalue", "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
