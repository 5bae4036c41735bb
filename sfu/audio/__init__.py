"""The audio bridge: each participant hears the mix of every other unmuted participant.

Data flow, per meeting (`AudioBridge`): a participant's client offers one sendrecv audio PC;
the decrypted RTP of that PC is decoded as it arrives (`mixer.MixInput`, at most a few 20 ms
frames kept); a drift-corrected 20 ms clock (`clock.Ticker`) runs `mixer.Mixer.tick`, which
takes one frame per unmuted participant, updates talking detection (`level`), sums the frames
with numpy, encodes the full mix once for everyone who is not in it and a mix-minus for each
one who is, and writes RTP through each PC's idle sender transport (`mixer.MixOutput`).
Tunables live in `AudioSettings`; aiortc private names go through `sfu.aiortc_hooks`.
"""

from .bridge import AudioBridge
from .settings import AudioSettings

__all__ = ["AudioBridge", "AudioSettings"]
