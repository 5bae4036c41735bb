"""AudioBridge: one meeting's audio, mixed like a conference bridge.

Each participant has one sendrecv audio PC that his client offers. What he sends is taken as
decrypted RTP at the PC's DTLS transport and decoded on arrival (aiortc's receive jitter buffer,
about 80 ms for audio, is skipped); what he hears is written as RTP straight to the transport of
the PC's idle sender: the mix of every other unmuted participant, produced by `Mixer` on a 20 ms
clock. Participants start muted. Talking changes go to `on_talking`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpSendParameters
from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket
from aiortc.sdp import SessionDescription

from .. import aiortc_hooks as hooks
from ..api import MediaError, bad_sdp
from ..metrics import MediaStats, watch_pc_states
from ..peer import create_peer_connection, local_sdp, parse_session_description
from .clock import Ticker
from .mixer import Member, Mixer, MixOutput, MixTap
from .settings import AudioSettings

log = logging.getLogger("meeting_sfu.sfu.audio")

AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
CLOSE_TIMEOUT = 5.0  # seconds allowed to close one PC
OUTPUT_RETRY_TICKS = 10  # a connected PC without a send path yet is retried this often

_OPUS = RTCRtpCodecCapability(
    mimeType="audio/opus", clockRate=48000, channels=2, parameters={}
)


class _IdleAudioTrack(hooks.IdleTrack):
    """The sender's track: it never yields, since the mixer writes the RTP itself."""

    kind = "audio"


class _Participant:
    """A participant's place in the bridge: his mixer member, his PC and its negotiation lock."""

    __slots__ = ("hooked", "identity", "lock", "member", "pc", "sender", "user_id", "wants_output")

    def __init__(self, user_id: str, member: Member) -> None:
        self.user_id = user_id
        self.member = member
        self.pc: RTCPeerConnection | None = None
        self.identity: tuple[Any, ...] | None = None
        self.lock = asyncio.Lock()
        self.hooked: list[Any] = []  # DTLS transports whose RTP reaches the member's input
        self.sender: Any = None
        self.wants_output = False


class AudioBridge:
    """The audio of one meeting (see module docstring)."""

    def __init__(
        self,
        meeting_id: str,
        on_talking: Callable[[str, bool], None],
        settings: AudioSettings | None = None,
        stats: MediaStats | None = None,
    ) -> None:
        self.meeting_id = meeting_id
        self.stats = stats  # the media service's counters (packets, mixer tick time)
        self.settings = settings if settings is not None else AudioSettings()
        self.mixer = Mixer(self.settings, on_talking)
        self.ticker = Ticker(self._tick)
        self._participants: dict[str, _Participant] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.closed = False

    # --- control ----------------------------------------------------------------------------

    async def offer(self, user_id: str, offer_sdp: str) -> str:
        """Answer the participant's audio offer: a new PC, or a renegotiation of his PC."""
        if self.closed:
            raise MediaError("closed", "the meeting's audio is closed")
        description = parse_session_description(offer_sdp, "offer")
        try:
            parsed = SessionDescription.parse(description.sdp)
        except Exception as exc:
            raise bad_sdp(f"sdp cannot be parsed: {exc.__class__.__name__}") from exc
        media = next((m for m in parsed.media if m.kind == "audio" and m.port != 0), None)
        if media is None:
            raise bad_sdp("the offer has no audio m-line")
        opus = next((c for c in media.rtp.codecs if c.mimeType.lower() == "audio/opus"), None)
        if opus is None or opus.payloadType is None:
            raise MediaError("unsupported_codec", "the audio offer has no Opus codec")
        level_id = next(
            (e.id for e in media.rtp.headerExtensions if e.uri == AUDIO_LEVEL_URI), None
        )
        identity = _transport_identity(media)
        p = self._participant(user_id)
        async with p.lock:
            if self.closed or self._participants.get(user_id) is not p:
                raise MediaError("gone", "the participant left the meeting's audio")
            pc = p.pc
            if pc is not None and (
                pc.connectionState in ("failed", "closed")
                or pc.signalingState != "stable"
                or identity != p.identity
            ):
                # A new client PC (or ICE restart), which aiortc cannot follow on the old one.
                await self._drop_pc(p)
                pc = None
            created = pc is None
            if pc is None:
                pc = self._new_pc(p)
            try:
                await pc.setRemoteDescription(description)
                self._hook_ingress(p, pc)
                answer = await pc.createAnswer()
                sdp = await local_sdp(pc, answer)
            except MediaError:
                raise
            except Exception as exc:
                if created:
                    await self._drop_pc(p)
                raise bad_sdp(f"offer rejected: {exc.__class__.__name__}: {exc}") from exc
            if self.closed or self._participants.get(user_id) is not p:
                await self._drop_pc(p)
                raise MediaError("gone", "the participant left the meeting's audio")
            p.identity = identity
            p.member.input.configure(opus.payloadType, level_id)
            if p.member.output is not None:
                p.member.output.payload_type = opus.payloadType
        self.ticker.start()
        return sdp

    @property
    def participant_count(self) -> int:
        return len(self._participants)

    def peer_connection(self, user_id: str) -> Any:
        """The participant's audio PC (None before his offer or after it closed)."""
        p = self._participants.get(user_id)
        return p.pc if p is not None else None

    def member(self, user_id: str) -> Member | None:
        """The participant's place in the mixer (None when he is not in the bridge)."""
        p = self._participants.get(user_id)
        return p.member if p is not None else None

    def set_enabled(self, user_id: str, enabled: bool) -> None:
        """Unmute (True) or mute (False); a participant starts muted, even before his PC."""
        if self.closed:
            return
        p = self._participant(user_id)
        if p.member.input.enabled != bool(enabled):
            self.mixer.set_enabled(p.member, bool(enabled))

    async def remove(self, user_id: str) -> None:
        """Take the participant out (the others' mix goes on without a gap) and close his PC."""
        p = self._participants.pop(user_id, None)
        if p is None:
            return
        self.mixer.discard(user_id)
        p.member.output = None
        await self._drop_pc(p)

    def set_mix_tap(self, tap: MixTap | None) -> None:
        """`tap(opus_payload, timestamp_48k)` receives the mix of everyone every 20 ms."""
        self.mixer.tap = tap
        if tap is not None and not self.closed:
            try:
                self.ticker.start()
            except RuntimeError:  # no running loop: the first offer starts the clock
                pass

    async def close(self) -> None:
        """Close every PC and stop the clock."""
        if self.closed:
            return
        self.closed = True
        await self.ticker.stop()
        participants = list(self._participants.values())
        self._participants.clear()
        self.mixer.members.clear()
        self.mixer.tap = None
        await asyncio.gather(*(self._drop_pc(p) for p in participants), return_exceptions=True)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=CLOSE_TIMEOUT)

    # --- queries ----------------------------------------------------------------------------

    def participants(self) -> list[str]:
        return list(self._participants)

    def is_enabled(self, user_id: str) -> bool:
        p = self._participants.get(user_id)
        return p is not None and p.member.input.enabled

    def is_talking(self, user_id: str) -> bool:
        p = self._participants.get(user_id)
        return p is not None and p.member.detector.talking

    def stats(self) -> dict[str, int | float]:
        inputs = [p.member.input for p in self._participants.values()]
        outputs = [p.member.output for p in self._participants.values() if p.member.output]
        return {
            "participants": len(self._participants),
            "connected": len(outputs),
            "ticks": self.mixer.ticks,
            "encodes": self.mixer.encodes,
            "skipped_ticks": self.ticker.skipped,
            "late_max_seconds": self.ticker.late_max,
            "packets_in": sum(i.packets for i in inputs),
            "dropped_in": sum(i.dropped for i in inputs),
            "invalid_in": sum(i.invalid for i in inputs),
            "packets_out": sum(o.packets for o in outputs),
        }

    # --- internals --------------------------------------------------------------------------

    def _participant(self, user_id: str) -> _Participant:
        p = self._participants.get(user_id)
        if p is None:
            p = self._participants[user_id] = _Participant(user_id, self.mixer.add(user_id))
            p.member.input.stats = self.stats
        return p

    def _new_pc(self, p: _Participant) -> RTCPeerConnection:
        pc = create_peer_connection()
        if self.stats is not None:
            watch_pc_states(pc, self.stats)
        transceiver: RTCRtpTransceiver = pc.addTransceiver(_IdleAudioTrack(), direction="sendrecv")
        transceiver.setCodecPreferences([_OPUS])
        sender = transceiver.sender
        hooks.hook_sender_start(sender, lambda params: self._sender_started(p, pc, params))
        hooks.hook_sender_reports(sender, lambda packets: _fill_report(p.member, packets))
        p.pc = pc
        p.sender = sender
        p.hooked = []
        p.wants_output = False

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and p.pc is pc:
                log.info(
                    "audio pc lost meeting=%s user=%s state=%s",
                    self.meeting_id, p.user_id, pc.connectionState,
                )
                self._forget_pc(p)
                self._close_later(pc)

        return pc

    def _hook_ingress(self, p: _Participant, pc: RTCPeerConnection) -> None:
        """Route the decrypted RTP of every audio receiver's transport to the member's input."""
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "audio":
                continue
            receiver = transceiver.receiver
            hooks.disable_reassembly(receiver)
            dtls = receiver.transport
            if dtls is not None and not any(d is dtls for d in p.hooked):
                hooks.hook_rtp_ingress(dtls, _current_pc_only(p, pc))
                p.hooked.append(dtls)

    def _sender_started(
        self, p: _Participant, pc: RTCPeerConnection, params: RTCRtpSendParameters
    ) -> None:
        if p.pc is not pc or self.closed:
            return
        p.wants_output = True
        self._bind_output(p)

    def _bind_output(self, p: _Participant) -> None:
        sender = p.sender
        if sender is None or p.pc is None:
            return
        path = hooks.send_path(sender.transport)
        if path is None:
            return  # retried from the tick
        p.wants_output = False
        ssrc = hooks.sender_ssrcs(sender)[0]
        pt = p.member.input.payload_type
        out = p.member.output
        if out is not None and out.ssrc == ssrc:
            out.payload_type = pt
            out.protect, out.sendto, out.addr = path.protect, path.sendto, path.addr
        else:
            p.member.output = MixOutput(ssrc, pt, path.protect, path.sendto, path.addr)
            p.member.output.stats = self.stats

    def _forget_pc(self, p: _Participant) -> None:
        p.pc = None
        p.sender = None
        p.hooked = []
        p.identity = None
        p.wants_output = False
        self.mixer.silence(p.member)

    async def _drop_pc(self, p: _Participant) -> None:
        pc = p.pc
        self._forget_pc(p)
        if pc is not None:
            await _close_pc(pc)

    def _close_later(self, pc: RTCPeerConnection) -> None:
        task = asyncio.get_running_loop().create_task(_close_pc(pc))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _tick(self, n: int) -> None:
        if n % OUTPUT_RETRY_TICKS == 0:
            for p in self._participants.values():
                if p.wants_output:
                    self._bind_output(p)
        started = time.perf_counter()
        self.mixer.tick(n)
        if self.stats is not None:
            self.stats.mixer_tick_seconds.observe(time.perf_counter() - started)


def _current_pc_only(p: _Participant, pc: RTCPeerConnection) -> Callable[[bytes], None]:
    """The member's input for RTP of `pc`, while `pc` is still the participant's PC (a replaced
    or failed PC may deliver a few more packets while it closes)."""
    on_rtp = p.member.input.on_rtp

    def ingress(data: bytes) -> None:
        if p.pc is pc:
            on_rtp(data)

    return ingress


async def _close_pc(pc: RTCPeerConnection) -> None:
    try:
        await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT)
    except Exception:
        log.debug("audio pc close failed", exc_info=True)


def _transport_identity(media: Any) -> tuple[Any, ...]:
    """ICE credentials and DTLS fingerprints: when they change, the client made a new PC."""
    ice = media.ice
    dtls = media.dtls
    fingerprints = tuple(
        (f.algorithm, f.value.lower()) for f in (dtls.fingerprints if dtls else [])
    )
    return (ice.usernameFragment if ice else None, ice.password if ice else None, fingerprints)


def _fill_report(member: Member, packets: list[Any]) -> None:
    """Fill the idle sender's RTCP sender report with what the mixer really sent."""
    out = member.output
    if out is None or not packets or not isinstance(packets[0], RtcpSrPacket):
        return
    report = out.sender_report()
    if report is None:
        return
    ntp, rtp_ts, count, octets = report
    packets[0].sender_info = RtcpSenderInfo(
        ntp_timestamp=ntp, rtp_timestamp=rtp_ts, packet_count=count, octet_count=octets
    )


__all__ = ["AUDIO_LEVEL_URI", "AudioBridge"]
