"""Simulcast in SDP (RFC 8851 `a=rid`, RFC 8853 `a=simulcast`): read from a publisher's offer
text, written into our answer text.

aiortc drops both attributes on parse, so the offer is read here, and the answer aiortc builds is
completed with `a=rid:<rid> recv` and `a=simulcast:recv <list>` in the video m-section. A browser
sends every layer only when the answer carries the symmetric `a=simulcast:recv`; without it, it
falls back to its first encoding. The offer's order and its `~` (paused) markers are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
MAX_LAYERS = 3  # more layers are refused by omission from the answer

_RID_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


@dataclass(frozen=True)
class SimulcastOffer:
    """What a publisher's video m-section offers: its rids (in the offer's simulcast order), the
    answer's `a=simulcast:recv` value, and the negotiated header-extension ids (None: absent)."""

    mid: str | None
    rids: tuple[str, ...]
    recv_list: str
    rid_ext: int | None
    repaired_rid_ext: int | None


def _sections(sdp: str) -> list[list[str]]:
    sections: list[list[str]] = [[]]
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def parse_simulcast(sdp: str, media_index: int) -> SimulcastOffer | None:
    """The simulcast offer of m-section `media_index` (0-based), or None when it sends one
    encoding (no `a=simulcast:send`, fewer than two usable rids, or no rid header extension: the
    browser then falls back to its first encoding)."""
    sections = _sections(sdp)
    if media_index + 1 >= len(sections):
        return None
    lines = sections[media_index + 1]
    send_rids: set[str] = set()
    send_list: str | None = None
    mid = None
    ids: dict[str, int] = {}
    for line in lines:
        if line.startswith("a=rid:"):
            parts = line[6:].split()
            if len(parts) >= 2 and parts[1] == "send" and _RID_ID.match(parts[0]):
                send_rids.add(parts[0])
        elif line.startswith("a=simulcast:"):
            parts = line[12:].split()
            # "send <list>" (a "recv" part, if any, is ignored: the publisher's PC only sends)
            for i in range(0, len(parts) - 1, 2):
                if parts[i] == "send":
                    send_list = parts[i + 1]
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif line.startswith("a=extmap:"):
            head, _, rest = line[9:].partition(" ")
            uri = rest.split(" ", 1)[0]
            number = head.split("/", 1)[0]
            if number.isdigit():
                ids[uri] = int(number)
    if send_list is None:
        return None
    kept: list[str] = []  # simulcast streams: alternatives separated by "," (we keep the first)
    rids: list[str] = []
    for stream in send_list.split(";"):
        first = stream.split(",", 1)[0]
        rid = first[1:] if first.startswith("~") else first
        if rid in send_rids and rid not in rids and len(rids) < MAX_LAYERS:
            rids.append(rid)
            kept.append(first)
    if len(rids) < 2 or RID_URI not in ids:
        return None  # (without the rid extension the layers' SSRCs could not be told apart)
    return SimulcastOffer(
        mid=mid,
        rids=tuple(rids),
        recv_list=";".join(kept),
        rid_ext=ids.get(RID_URI),
        repaired_rid_ext=ids.get(REPAIRED_RID_URI),
    )


def add_simulcast_answer(sdp: str, offer: SimulcastOffer) -> str:
    """The answer text with the simulcast lines in the m-section of `offer.mid` (idempotent)."""
    sections = _sections(sdp)
    out: list[str] = list(sections[0])
    for section in sections[1:]:
        mid = next((ln[6:].strip() for ln in section if ln.startswith("a=mid:")), None)
        if mid == offer.mid and not any(ln.startswith("a=simulcast:") for ln in section):
            while section and section[-1] == "":
                section = section[:-1]
            section = section + [f"a=rid:{rid} recv" for rid in offer.rids]
            section.append(f"a=simulcast:recv {offer.recv_list}")
        out.extend(section)
    text = "\r\n".join(line for line in out if line != "")
    return text + "\r\n"


__all__ = [
    "MAX_LAYERS",
    "REPAIRED_RID_URI",
    "RID_URI",
    "SimulcastOffer",
    "add_simulcast_answer",
    "parse_simulcast",
]
