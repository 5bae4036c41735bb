"""Which forwarding path runs: the compiled fast path (`sfu/_fastpath.c`) or pure Python.

The extension is built by `scripts/setup` (gcc and the Python headers); when it is missing or
fails to load, or when `MEETING_SFU_FASTPATH=0` is set, everything runs in Python
(`Consumer.forward`), with the same behaviour. `StreamBase` is the base class of
`sfu.consumer.Consumer` either way: with the extension it is the C object whose members both
paths read and write (so a consumer can move between them packet by packet without losing a
sequence number), without it a plain class with the same attribute names.

`enabled` may be flipped at run time (tests do): it only selects which path forwards the next
packet.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("meeting_sfu.sfu.fastpath")

ENV = "MEETING_SFU_FASTPATH"
# The lean receive path of publishers' RTP (aiortc_hooks.LeanIngress) is on unless this is 0
# (or MEETING_SFU_FASTPATH=0, which turns every shortcut off); it does not need the extension.
LEAN_ENV = "MEETING_SFU_LEAN_RECEIVE"
# The lean RTCP of subscriber connections (aiortc_hooks.RtcpIngress) and their sender reports in
# batches (aiortc_hooks.SenderReports) are on unless this is 0 (or MEETING_SFU_FASTPATH=0).
LEAN_RTCP_ENV = "MEETING_SFU_LEAN_RTCP"
_OFF = ("0", "false", "no", "off")

_why_not = ""
_ext: Any = None
if os.environ.get(ENV, "1").strip().lower() in _OFF:
    _why_not = f"{ENV}=0"
else:
    try:
        from . import _fastpath as _ext  # type: ignore[no-redef]
    except ImportError as exc:
        _why_not = f"extension not built ({exc})"

if _ext is not None:
    from . import aiortc_hooks as _hooks

    try:
        _ext.set_protect(_hooks.srtp_protect_address())
        _ext.set_unprotect(_hooks.srtp_protect_address("srtp_unprotect"))
        _ext.set_rtcp(
            _hooks.srtp_protect_address("srtp_protect_rtcp"), _hooks.srtp_protect_address("srtp_unprotect_rtcp")
        )
    except Exception as exc:  # pylibsrtp without the libsrtp 2.x entry points: stay in Python
        _why_not = f"pylibsrtp's srtp_protect unavailable ({exc})"
        _ext = None

available = _ext is not None
enabled = available
# Read when a publisher's PC is attached (tests flip it): new publishers take the lean path.
lean_receive = not _why_not.startswith(ENV) and os.environ.get(LEAN_ENV, "1").strip().lower() not in _OFF
# Read when a subscriber m-line is created (its reports) and when its DTLS connects (its RTCP).
lean_rtcp = not _why_not.startswith(ENV) and os.environ.get(LEAN_RTCP_ENV, "1").strip().lower() not in _OFF


if _ext is not None:
    StreamBase: Any = _ext.StreamBase
    forward = _ext.forward
    SocketFd = _ext.SocketFd
    # unprotect(ctx, data) -> bytes | None: the lean receive path's SRTP (libsrtp's srtp_unprotect)
    unprotect: Any = _ext.unprotect
    # unprotect_rtcp / protect_rtcp(ctx, data) -> bytes | None: libsrtp's SRTCP calls (the lean
    # RTCP path of subscriber connections, the batched sender reports)
    unprotect_rtcp: Any = _ext.unprotect_rtcp
    protect_rtcp: Any = _ext.protect_rtcp
else:

    class StreamBase:  # type: ignore[no-redef]
        """The Python stand-in for the extension's StreamBase (same attributes)."""

        __slots__ = (
            "bound",
            "paused",
            "waiting_keyframe",
            "has_abs",
            "pt",
            "ssrc",
            "x_bit",
            "src_ssrc",
            "seq_off",
            "ts_off",
            "max_seq",
            "max_ts",
            "packets",
            "octets",
            "last_time",
            "ext_before",
            "ext_after",
        )
        fast_send = False

        def set_fast_send(self, *args: Any) -> bool:
            return False

    forward = None
    SocketFd = None
    unprotect = None
    unprotect_rtcp = None
    protect_rtcp = None


def describe() -> str:
    """One line for the start-up log."""
    if available:
        return f"forwarding path: compiled fast path (sfu/_fastpath.c, sendmmsg, batches of {_ext.BATCH})"
    return f"forwarding path: pure Python ({_why_not})"


def describe_receive() -> str:
    """One line for the start-up log: how publishers' RTP is received."""
    if lean_receive:
        text = "publisher receive path: lean (SRTP from the shared socket straight to the producer)"
    else:
        text = f"publisher receive path: aiortc's ({ENV}=0 or {LEAN_ENV}=0)"
    if lean_rtcp:
        return text + "; subscriber RTCP: lean, sender reports in batches"
    return text + f"; subscriber RTCP: aiortc's ({ENV}=0 or {LEAN_RTCP_ENV}=0)"


_announced = False


def announce() -> None:
    """Log which forwarding path runs, once per process (media services call it at start)."""
    global _announced
    if not _announced:
        _announced = True
        (log.info if available or _why_not.startswith(ENV) else log.warning)(describe())
        log.info(describe_receive())


def counters() -> dict[str, int]:
    """Send and protect errors of the fast path since the process started."""
    return dict(_ext.counters()) if _ext is not None else {"send_errors": 0, "protect_errors": 0}


def attach_send(consumer: Any, path: Any) -> bool:
    """Give `consumer` the fast send of its transport (SRTP session + shared socket), or take it
    away (path None); False when the path cannot be sent on from C (the slow path sends)."""
    if _ext is None:
        return False
    if path is None or path.srtp is None or path.fd is None or not isinstance(path.addr, tuple):
        consumer.set_fast_send(None)
        return False
    try:
        ctx = _hooks.srtp_context(path.srtp)
        host, port = path.addr[0], int(path.addr[1])
        return bool(consumer.set_fast_send(path.srtp, ctx, path.fd, str(host), port))
    except Exception as exc:  # never a reason not to forward: the slow path does it
        log.debug("fast send unavailable for %r: %s", consumer, exc)
        consumer.set_fast_send(None)
        return False


def socket_fd(fileno: int) -> Any:
    """A duplicate of a socket's descriptor for the fast path (None without the extension)."""
    if _ext is None or fileno < 0:
        return None
    return _ext.SocketFd(fileno)


__all__ = [
    "ENV",
    "LEAN_ENV",
    "LEAN_RTCP_ENV",
    "StreamBase",
    "announce",
    "attach_send",
    "available",
    "counters",
    "describe",
    "enabled",
    "forward",
    "lean_receive",
    "lean_rtcp",
    "socket_fd",
]
