"""Meetings for a run, made through the real HTTP API, and the client specs that join them."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from .clients import ClientSpec


async def create_meetings(
    base_url: str,
    authority: Any,
    meetings: int,
    publishers: int,
    subscribers: int,
    options: argparse.Namespace,
    *,
    urls: list[str] | None = None,
    owner_url: Callable[[str], Awaitable[str]] | None = None,
) -> list[ClientSpec]:
    """Meeting m is created and started through `urls[m % len(urls)]` (default: `base_url`); its
    clients call `owner_url(meeting id)` when given (the node that owns it in a cluster), else
    that same URL."""
    specs: list[ClientSpec] = []
    decoding_meetings = meetings if options.decoding_meetings is None else options.decoding_meetings
    reading = getattr(options, "reading", None)  # light subscribers per meeting that read every packet
    urls = urls or [base_url]
    async with aiohttp.ClientSession() as http:
        for m in range(meetings):
            base_url = urls[m % len(urls)]
            room = str(uuid.uuid4())
            pubs = [str(uuid.uuid4()) for _ in range(publishers)]
            subs = [str(uuid.uuid4()) for _ in range(subscribers)]
            owner = authority(pubs[0], {room: "owner"})
            headers = {"Authorization": f"Bearer {owner}"}
            async with http.post(
                f"{base_url}/meetings",
                headers=headers,
                json={
                    "name": f"bench {m}",
                    "roomId": room,
                    "meetingType": "permanent",
                },
            ) as r:
                body = await r.json(content_type=None)
                if r.status != 200:
                    raise RuntimeError(f"create meeting: HTTP {r.status} {body}")
                meeting_id = body["id"]
            async with http.post(f"{base_url}/meetings/{meeting_id}/start", headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"start meeting: HTTP {r.status} {await r.text()}")
            client_url = await owner_url(meeting_id) if owner_url is not None else base_url
            for i, user in enumerate(pubs):
                specs.append(
                    ClientSpec(
                        user,
                        owner if i == 0 else authority(user, {room: "member"}),
                        meeting_id,
                        "publisher",
                        audio=options.audio,
                        seed=len(specs),
                        base_url=client_url,
                    )
                )
            batch = getattr(options, "join_batch", 0)
            interval = getattr(options, "join_interval", 0.0)
            for i, user in enumerate(subs):
                specs.append(
                    ClientSpec(
                        user,
                        authority(user, {room: "member"}),
                        meeting_id,
                        "subscriber",
                        decode=i < options.decoders and m < decoding_meetings,
                        kernel_count=reading is not None and i >= options.decoders + reading,
                        audio=options.audio,
                        publishers=pubs,
                        join_delay=(i // batch) * interval if batch > 0 else 0.0,
                        base_url=client_url,
                    )
                )
    return specs


def make_authority(secret: str) -> Any:
    from control_api.auth import TokenAuthority

    tokens = TokenAuthority(secret)

    def mint(user: str, rooms: dict[str, str]) -> str:
        return tokens.mint(user, name=f"bench {user[:8]}", rooms=rooms, ttl_seconds=6 * 3600)

    return mint
