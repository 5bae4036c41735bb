"""Settings: embedded defaults, an optional TOML file, then MEETING_SFU_<SECTION>_<KEY> variables.

Every key is documented in config.example.toml; what is not set keeps its default here. A key is
one line of its section's dataclass: its type, and in `Annotated[...]` the values it allows
(`Between`, `OneOf`) or `PATH` (relative to the file that sets it). File and variables are checked
against it; an error names the key and the file, or the variable.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from sfu.audio.settings import AudioSettings
from sfu.settings import MediaPlaneSettings


class ConfigError(ValueError):
    """A setting has the wrong type, a value outside its range, or an unknown name."""


class Between:
    """The inclusive range of an int or float setting: `Annotated[int, Between(1, 65535)]`."""

    __slots__ = ("low", "high")

    def __init__(self, low: float, high: float = math.inf) -> None:
        self.low, self.high = low, high

    def allows(self, value: Any) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"at least {self.low}" if self.high == math.inf else f"from {self.low} to {self.high}"


class OneOf:
    """The values a string setting may take: `Annotated[str, OneOf("a", "b")]`."""

    __slots__ = ("choices",)

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def allows(self, value: Any) -> bool:
        return value in self.choices

    def __str__(self) -> str:
        return "one of " + ", ".join(self.choices)


class FileRelative:
    """A path setting: written relative in a configuration file, it is relative to that file."""

    __slots__ = ()


PATH = FileRelative()
LOG_LEVELS = ("debug", "info", "warning", "error")


_BASE_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: Annotated[int, Between(1, 65535)] = 10000
    max_body_bytes: Annotated[int, Between(1)] = 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    header_timeout_seconds: Annotated[float, Between(0)] = 10.0
    base_path: str = ""  # e.g. "/services/chats": the API also answers under this prefix

    def __post_init__(self) -> None:
        path = self.base_path
        if path and (not _BASE_PATH.fullmatch(path) or any(p in (".", "..") for p in path.split("/"))):
            raise ConfigError(
                f"[server] base_path: {path!r} must start with '/', not end with '/', and have only"
                " letters, digits, '.', '_', '~' or '-' between its slashes (no spaces)"
            )


@dataclass(frozen=True)
class AuthSettings:
    jwt_secret: str = ""
    leeway_seconds: Annotated[int, Between(0)] = 30
    default_ttl_seconds: Annotated[int, Between(1)] = 3600


@dataclass(frozen=True)
class StorageSettings:
    data_dir: Annotated[str, PATH] = "data"
    database_url: str = ""  # empty: SQLite in data_dir; postgresql://...: PostgreSQL

    def __post_init__(self) -> None:
        if self.database_url and self.database_url.partition("://")[0] not in ("postgresql", "postgres"):
            raise ConfigError("[storage] database_url: expected empty (SQLite) or a postgresql:// URL")


_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True)
class ClusterSettings:
    redis_url: str = ""  # empty: a single node; redis://...: one of a cluster (DESIGN 9.2)
    node_id: str = ""  # empty: a fresh id at each start
    # Every Redis key and channel of the cluster starts with it: several clusters (or test runs)
    # may share one redis-server (pub/sub channels are not scoped by Redis's database number).
    key_prefix: str = "msfu:"
    # The HTTP address other nodes and operators see in the node registry; empty: http://host:port.
    advertise_url: str = ""

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.key_prefix):
            raise ConfigError(
                f"[cluster] key_prefix: {self.key_prefix!r} must be 1-64 letters, digits, '.', '_', '-' or ':'"
            )
        if self.redis_url and self.redis_url.partition("://")[0] not in ("redis", "rediss", "unix"):
            raise ConfigError(
                "[cluster] redis_url: expected empty (a single node) or a redis://, rediss:// or unix:// URL"
            )
        if self.node_id and not _NODE_ID.fullmatch(self.node_id):
            raise ConfigError(f"[cluster] node_id: {self.node_id!r} must be 1-64 letters, digits, '.', '_' or '-'")


@dataclass(frozen=True)
class RecordingSettings:
    dir: Annotated[str, PATH] = ""  # empty: <data_dir>/recordings


_AUDIO = AudioSettings()  # the talking defaults have one source: the audio bridge's settings


@dataclass(frozen=True)
class MediaSettings:
    ice_addresses: tuple[str, ...] = ("127.0.0.1",)
    public_ip: str = ""
    workers: Annotated[int, Between(0, 256)] = 0  # media worker processes; 0: one per CPU
    udp_port: Annotated[int, Between(0, 65535)] = 0  # worker i binds udp_port + i; 0: the OS chooses
    talking_level_dbov: Annotated[int, Between(0, 127)] = _AUDIO.talking_level_dbov
    talking_packets: Annotated[int, Between(1, 3000)] = _AUDIO.talking_packets
    silence_packets: Annotated[int, Between(1, 3000)] = _AUDIO.silence_packets
    max_video_bitrate: Annotated[int, Between(50_000, 100_000_000)] = 2_500_000  # bits/s: REMB cap, video
    max_screen_bitrate: Annotated[int, Between(50_000, 100_000_000)] = 2_500_000  # bits/s: REMB cap, screen

    def plane_settings(self) -> MediaPlaneSettings:
        """What the media plane gets: its own plain settings, never this Config."""
        audio = replace(
            _AUDIO,
            talking_level_dbov=self.talking_level_dbov,
            talking_packets=self.talking_packets,
            silence_packets=self.silence_packets,
        )
        return MediaPlaneSettings(
            ice_addresses=self.ice_addresses,
            public_ip=self.public_ip,
            udp_port=self.udp_port,
            audio=audio,
            max_video_bitrate=self.max_video_bitrate,
            max_screen_bitrate=self.max_screen_bitrate,
        )


@dataclass(frozen=True)
class MeetingSettings:
    expiry_check_seconds: Annotated[float, Between(0.05)] = 5.0
    max_events_queue: Annotated[int, Between(1)] = 1024


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = True
    token: str = ""


@dataclass(frozen=True)
class LoggingSettings:
    level: Annotated[str, OneOf(*LOG_LEVELS)] = "info"
    format: Annotated[str, OneOf("keyvalue", "json")] = "keyvalue"


@dataclass(frozen=True)
class DemoSettings:
    enabled: bool = True
    remote_tokens: bool = False


@dataclass(frozen=True)
class Config:
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    meetings: MeetingSettings = field(default_factory=MeetingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    @property
    def data_path(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def database_path(self) -> Path:
        return self.data_path / "meeting-sfu.sqlite3"

    @property
    def recording_path(self) -> Path:
        return Path(self.recording.dir) if self.recording.dir else self.data_path / "recordings"

    def with_overrides(
        self, overrides: Mapping[str, Mapping[str, Any]], *, file: Path | None = None
    ) -> "Config":
        """A copy with `{section: {key: value}}` applied, each value checked like the file's.

        `file`: the configuration file the values come from (named in errors; relative paths
        are relative to it)."""
        sections = {}
        for section, values in overrides.items():
            current = _section(self, section, file)
            changes = {}
            for key, value in values.items():
                where = f"[{section}] {key}" + (f" (in {file})" if file else "")
                changes[key] = _convert(_kinds(type(current)).get(key), where, value, file)
            sections[section] = replace(current, **changes)
        return replace(self, **sections)


def _section(config: Config, name: str, file: Path | None) -> Any:
    if name not in {f.name for f in fields(Config)}:
        known = ", ".join(f"[{f.name}]" for f in fields(Config))
        raise ConfigError(f"unknown section [{name}]" + (f" in {file}" if file else "") + f"; known: {known}")
    return getattr(config, name)


@cache
def _kinds(section_cls: type) -> dict[str, Any]:
    """Each key's annotation: a type, or `Annotated[type, constraint...]`."""
    return get_type_hints(section_cls, include_extras=True)


def _convert(kind: Any, where: str, value: Any, file: Path | None = None) -> Any:
    """The value of one setting, from TOML (typed) or from the environment (a string)."""
    if kind is None:
        raise ConfigError(f"unknown setting {where}")
    base, marks = kind, ()
    if get_origin(kind) is Annotated:
        base, *marks = get_args(kind)
    try:
        result = _typed(base, value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {_describe(base, marks)}, got {value!r}") from None
    for mark in marks:
        if isinstance(mark, (Between, OneOf)) and not mark.allows(result):
            raise ConfigError(f"{where}: expected {_describe(base, marks)}, got {value!r}")
        if isinstance(mark, FileRelative) and file is not None and result and not Path(result).is_absolute():
            result = str(file.parent / result)
    return result


def _typed(base: Any, value: Any) -> Any:
    if get_origin(base) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise TypeError
        return tuple(value)
    if base is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise TypeError
        if not isinstance(value, bool):
            raise TypeError
        return value
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError
        if base is int and isinstance(value, float):
            raise TypeError
        return base(value)
    if not isinstance(value, str):
        raise TypeError
    return value


def _describe(base: Any, marks: tuple) -> str:
    choices = [str(m) for m in marks if isinstance(m, OneOf)]
    if choices:
        return choices[0]
    if get_origin(base) is tuple:
        text = "a list of strings (comma-separated in a variable)"
    else:
        text = {bool: "true or false", int: "an integer", float: "a number"}.get(base, "a string")
    return " ".join([text, *(str(m) for m in marks if isinstance(m, Between))])


ENV_PREFIX = "MEETING_SFU_"
# Variables with the prefix that are read elsewhere, not settings (not warned about).
# sfu/fastpath.py: 0 forces pure Python / aiortc's own receive path / aiortc's own subscriber RTCP
ENV_NOT_SETTINGS = frozenset({"MEETING_SFU_FASTPATH", "MEETING_SFU_LEAN_RECEIVE", "MEETING_SFU_LEAN_RTCP"})


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    warn: Callable[[str], None] | None = None,
) -> Config:
    """Defaults, then the TOML file (if given), then MEETING_SFU_<SECTION>_<KEY> variables.

    A variable with the prefix that names no setting is not an error (Kubernetes injects
    MEETING_SFU_SERVICE_HOST and friends for a Service named meeting-sfu): `warn` gets one line
    naming them (default: a warning logged)."""
    config = Config()
    if path is not None:
        file = Path(path).absolute()
        try:
            with open(file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{section} must be a [section] (in {file})")
            config = config.with_overrides({section: values}, file=file)
    env = os.environ if env is None else env
    unknown = []
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_SETTINGS:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        owner = getattr(config, section, None) if section in {f.name for f in fields(Config)} else None
        kind = _kinds(type(owner)).get(key) if owner is not None else None
        if kind is None:
            unknown.append(name)
            continue
        config = replace(config, **{section: replace(owner, **{key: _convert(kind, name, value)})})
    if unknown:
        (warn or logging.getLogger("meeting_sfu.config").warning)(
            f"ignoring environment variables that name no setting: {', '.join(unknown)}"
            f" (settings are {ENV_PREFIX}<SECTION>_<KEY>, e.g. {ENV_PREFIX}SERVER_PORT)"
        )
    return config
