"""Settings: embedded defaults, an optional TOML file, then MEETING_SFU_<SECTION>_<KEY> variables.

Every key is documented in config.example.toml; what is not set keeps its default here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting has the wrong type or an unknown name."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 10000
    max_body_bytes: int = 1024 * 1024
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthSettings:
    jwt_secret: str = ""
    leeway_seconds: int = 30
    default_ttl_seconds: int = 3600


@dataclass(frozen=True)
class StorageSettings:
    data_dir: str = "data"
    database_url: str = ""  # empty: SQLite in data_dir; postgresql://...: PostgreSQL

    def __post_init__(self) -> None:
        if self.database_url and self.database_url.partition("://")[0] not in ("postgresql", "postgres"):
            raise ConfigError("[storage] database_url: expected empty (SQLite) or a postgresql:// URL")


@dataclass(frozen=True)
class RecordingSettings:
    dir: str = ""  # empty: <data_dir>/recordings


@dataclass(frozen=True)
class MediaSettings:
    ice_addresses: tuple[str, ...] = ("127.0.0.1",)
    public_ip: str = ""
    talking_level_dbov: int = 45
    talking_packets: int = 10
    silence_packets: int = 25


@dataclass(frozen=True)
class MeetingSettings:
    expiry_check_seconds: float = 5.0
    max_events_queue: int = 1024


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = True
    token: str = ""


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"
    format: str = "keyvalue"  # or "json"


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

    @property
    def data_path(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def recording_path(self) -> Path:
        return Path(self.recording.dir) if self.recording.dir else self.data_path / "recordings"

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> "Config":
        """A copy with `{section: {key: value}}` applied (values converted like the file's)."""
        sections = {}
        for section, values in overrides.items():
            current = _section(self, section)
            sections[section] = replace(
                current, **{k: _convert(current, section, k, v) for k, v in values.items()}
            )
        return replace(self, **sections)


def _section(config: Config, name: str) -> Any:
    if name not in {f.name for f in fields(Config)}:
        raise ConfigError(f"unknown section [{name}]")
    return getattr(config, name)


def _convert(section_obj: Any, section: str, key: str, value: Any) -> Any:
    kinds = {f.name: f.type for f in fields(section_obj)}
    if key not in kinds:
        raise ConfigError(f"unknown setting [{section}] {key}")
    kind = str(kinds[key])
    try:
        if kind.startswith("tuple"):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return tuple(value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise TypeError
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind == "int":
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"[{section}] {key}: expected {kind}, got {value!r}") from None


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the TOML file (if given), then environment variables."""
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{section} must be a [section]")
            config = config.with_overrides({section: values})
    env = os.environ if env is None else env
    prefix = "MEETING_SFU_"
    for name, value in env.items():
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):].lower()
        section, _, key = rest.partition("_")
        if not key:
            continue
        config = config.with_overrides({section: {key: value}})
    return config
