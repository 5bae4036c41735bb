"""Request parsing: strict JSON bodies, typed fields, UUID path ids. Every failure is a 400."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from .auth import canonical_uuid
from .errors import bad_request

_MISSING = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_text(value: Any) -> None:
    """Lone surrogates (from \\ud800 escapes) are not Unicode text: refuse them."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("body contains a lone surrogate", "invalid_json") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k)
            _check_text(v)
    elif isinstance(value, list):
        for v in value:
            _check_text(v)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("a JSON body is required", "invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("body is not valid UTF-8", "invalid_json") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise bad_request("body is not valid JSON", "invalid_json") from None
    if not isinstance(value, dict):
        raise bad_request("body must be a JSON object", "invalid_json")
    _check_text(value)
    return value


def path_uuid(value: str, name: str) -> str:
    canonical = canonical_uuid(value)
    if canonical is None:
        raise bad_request(f"{name} must be a UUID", "invalid_id")
    return canonical


class Body:
    """Typed access to the fields of one JSON object."""

    def __init__(self, data: dict[str, Any], where: str = "") -> None:
        self._data = data
        self._where = where

    def _get(self, name: str, required: bool) -> Any:
        value = self._data.get(name, _MISSING)
        if value is None:
            value = _MISSING  # null is as good as absent (nulls are omitted on the wire)
        if value is _MISSING and required:
            raise bad_request(f"{self._where}{name} is required", "missing_field")
        return value

    def _fail(self, name: str, expected: str) -> Any:
        raise bad_request(f"{self._where}{name} must be {expected}", "invalid_field")

    def boolean(self, name: str, required: bool = True) -> bool | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if not isinstance(value, bool):
            self._fail(name, "a boolean")
        return value

    def string(
        self, name: str, required: bool = True, min_len: int = 0, max_len: int | None = None
    ) -> str | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            self._fail(name, "a string")
        if len(value) < min_len or (max_len is not None and len(value) > max_len):
            self._fail(name, f"a string of {min_len} to {max_len} characters")
        return value

    def enum(self, name: str, values: tuple[str, ...], required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if value not in values:
            self._fail(name, "one of " + ", ".join(values))
        return value

    def uuid(self, name: str, required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        canonical = canonical_uuid(value)
        if canonical is None:
            self._fail(name, "a UUID")
        return canonical

    def datetime(self, name: str, required: bool = True) -> datetime | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            self._fail(name, "an RFC 3339 date-time")
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return self._fail(name, "an RFC 3339 date-time")
        if "T" not in text.upper() and " " not in text:
            self._fail(name, "an RFC 3339 date-time")
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt

    def objects(self, name: str, required: bool = True, max_items: int = 100) -> list["Body"] | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self._fail(name, "a list of objects")
        if len(value) > max_items:
            self._fail(name, f"a list of at most {max_items} items")
        return [Body(v, f"{self._where}{name}[{i}].") for i, v in enumerate(value)]


# A recording's file name gets "-<n>" when taken (n up to MAX_NAME_SUFFIX) and ".mkv"; the
# whole must fit in one file-system name (255 bytes on ext4, xfs, btrfs, tmpfs).
MAX_NAME_SUFFIX = 99999
MAX_COMPONENT_BYTES = 255 - len(f"-{MAX_NAME_SUFFIX}.mkv")


def safe_path_component(value: str, name: str) -> str:
    """1..128 characters, no / or \\, not . or .., no control characters (DESIGN section 7),
    and short enough in UTF-8 for the file system once a suffix and ".mkv" are added."""
    if not 1 <= len(value) <= 128:
        raise bad_request(f"{name} must have 1 to 128 characters", "invalid_field")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        raise bad_request(f"{name} must be at most {MAX_COMPONENT_BYTES} bytes in UTF-8", "invalid_field")
    if value in (".", "..") or "/" in value or "\\" in value:
        raise bad_request(f"{name} must not be a path", "invalid_field")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise bad_request(f"{name} must not contain control characters", "invalid_field")
    return value
