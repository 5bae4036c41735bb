"""The media plane's settings have one source each, are validated like every key, and reach the
media plane as its own plain data (DESIGN §9.1; issue 15 item 7)."""

from __future__ import annotations

import pytest

from control_api.config import Config, ConfigError, load_config
from sfu.audio.settings import AudioSettings
from sfu.settings import MediaPlaneSettings


def test_the_talking_defaults_are_the_audio_bridges_own():
    media = Config().media
    audio = AudioSettings()
    assert (media.talking_level_dbov, media.talking_packets, media.silence_packets) == (
        audio.talking_level_dbov,
        audio.talking_packets,
        audio.silence_packets,
    )
    assert media.plane_settings().audio == audio


def test_config_example_equals_the_defaults_for_media(tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    assert load_config(example, env={}).media == Config().media


@pytest.mark.parametrize(
    "key, value",
    [
        ("talking_packets", 0),
        ("silence_packets", 100000),
        ("talking_level_dbov", 200),
        ("talking_level_dbov", "loud"),
        ("workers", -1),
        ("udp_port", 70000),
        ("max_video_bitrate", 10),
    ],
)
def test_a_bad_media_value_is_an_error_naming_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        Config().with_overrides({"media": {key: value}})
    assert key in str(err.value)


def test_a_bad_value_in_the_environment_names_the_variable():
    with pytest.raises(ConfigError) as err:
        load_config(None, env={"MEETING_SFU_MEDIA_SILENCE_PACKETS": "soon"})
    assert "MEETING_SFU_MEDIA_SILENCE_PACKETS" in str(err.value)


def test_the_media_plane_gets_plain_settings_that_cross_the_worker_channel():
    config = Config().with_overrides(
        {"media": {"ice_addresses": ["127.0.0.2"], "udp_port": 41000, "talking_packets": 7, "workers": 3}}
    )
    settings = config.media.plane_settings()
    assert isinstance(settings, MediaPlaneSettings)
    assert settings.udp_port == 41000 and settings.audio.talking_packets == 7
    assert MediaPlaneSettings.from_wire(settings.to_wire()) == settings
