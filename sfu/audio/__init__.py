"""The audio bridge: each participant hears the mix of every other unmuted participant."""

from .bridge import AudioBridge
from .settings import AudioSettings

__all__ = ["AudioBridge", "AudioSettings"]
