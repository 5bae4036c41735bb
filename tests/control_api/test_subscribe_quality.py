"""The `quality` of a subscribe item (DESIGN §6.1, an extension): "low" | "medium" | "high" is
accepted, anything else is a 400 that changes nothing; it crosses to the media workers."""

from __future__ import annotations

import pytest

from sfu.api import StreamRef
from sfu.channel import refs_from_wire, refs_to_wire

from .support import is_error, started_meeting, user


async def _two_in_a_meeting(server):
    from tests.helpers import new_id

    room = new_id()
    owner = await user(server, {room: "owner"})
    other = await user(server, {room: "member"})
    meeting = await started_meeting(owner, room)
    mid = meeting["id"]
    assert (await owner.join(mid))[0] == 200
    assert (await other.join(mid))[0] == 200
    return owner, other, mid


@pytest.mark.parametrize("quality", ["low", "medium", "high", None])
async def test_a_known_quality_is_accepted(server, quality):
    # (null is as good as absent, as everywhere in the API)
    owner, other, mid = await _two_in_a_meeting(server)
    body = {"subscribe": [{"userId": other.id, "type": "video", "quality": quality}], "unsubscribe": []}
    status, answer = await owner.call("PUT", f"/meetings/{mid}/media/subscribe", body)
    assert status == 204, answer  # nothing published yet: skipped, as without quality


@pytest.mark.parametrize("quality", ["ultra", "LOW", "", 1, ["low"], {"q": 1}])
async def test_any_other_quality_is_400(server, quality):
    owner, other, mid = await _two_in_a_meeting(server)
    for body in (
        {"subscribe": [{"userId": other.id, "type": "video", "quality": quality}], "unsubscribe": []},
        {"subscribe": [], "unsubscribe": [{"userId": other.id, "type": "screen", "quality": quality}]},
    ):
        status, answer = await owner.call("PUT", f"/meetings/{mid}/media/subscribe", body)
        assert status == 400 and is_error(answer), (quality, answer)


def test_quality_crosses_the_worker_channel():
    refs = [StreamRef("a", "video"), StreamRef("b", "screen", "low")]
    assert refs_from_wire(refs_to_wire(refs)) == refs
    assert refs_to_wire(refs)[0] == ["a", "video"]  # unchanged without quality
