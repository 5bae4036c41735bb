"""DESIGN section 8's order on the media calls: the syntax of the body (an SDP that cannot be
parsed, a missing sdp, an empty or self subscription) is a 400 before existence (404: not a
participant), rights (403) or state (409: no offer pending) are looked at."""

from __future__ import annotations

import pytest

from .support import is_error, started_meeting, user

GARBAGE_SDP = "v=0\r\no=- x\r\nm=video notaport RTP/AVP 96\r\n"  # starts like one, parses as none


@pytest.fixture
async def cast(server):
    """Olga started a permanent meeting and joined it; Max (a member) has not joined; Xavier is
    no member of the room."""
    room = "9f2d5a4e-0000-4000-8000-000000000001"
    olga = await user(server, {room: "owner"})
    max_ = await user(server, {room: "member"})
    xavier = await user(server)
    meeting = await started_meeting(olga, room)
    status, body = await olga.join(meeting["id"])
    assert status == 200, body
    return meeting["id"], olga, max_, xavier


@pytest.mark.parametrize("who", ["participant", "not-joined", "outsider"])
@pytest.mark.parametrize(
    "method, tail, body",
    [
        # The participant has no receive PC, so no offer is pending: this was a 409.
        pytest.param("PUT", "/media/answer", {"sdp": GARBAGE_SDP}, id="answer-garbage"),
        pytest.param("PUT", "/media/answer", {"sdp": "not an sdp"}, id="answer-no-v0"),
        pytest.param("PUT", "/audio/offer", {"sdp": GARBAGE_SDP}, id="audio-offer-garbage"),
        pytest.param("PUT", "/media", {"type": "video", "enabled": True, "sdp": GARBAGE_SDP}, id="media-garbage"),
        pytest.param("PUT", "/media", {"type": "screen", "enabled": True, "sdp": ""}, id="media-empty-sdp"),
        pytest.param("PUT", "/media", {"type": "video", "enabled": True}, id="media-no-sdp"),
        pytest.param("PUT", "/media/subscribe", {"subscribe": [], "unsubscribe": []}, id="subscribe-empty"),
        pytest.param("PUT", "/audio", {"enabled": "yes"}, id="audio-bad-flag"),
        pytest.param("POST", "/stopRecording", {"name": "a/b", "folderId": "f"}, id="stop-recording-bad-name"),
    ],
)
async def test_body_syntax_is_checked_before_existence_rights_and_state(cast, who, method, tail, body):
    meeting_id, olga, max_, xavier = cast
    caller = {"participant": olga, "not-joined": max_, "outsider": xavier}[who]
    status, answer = await caller.call(method, f"/meetings/{meeting_id}{tail}", body)
    assert status == 400 and is_error(answer), (status, answer)


async def test_subscribing_to_oneself_is_a_400_before_existence(cast):
    meeting_id, olga, max_, _ = cast
    for caller in (olga, max_):  # max_ is no participant: that 404 comes after the body's 400
        status, body = await caller.call(
            "PUT",
            f"/meetings/{meeting_id}/media/subscribe",
            {"subscribe": [{"userId": caller.id, "type": "video"}], "unsubscribe": []},
        )
        assert status == 400 and is_error(body), body


async def test_well_formed_calls_still_get_their_404_403_409(cast):
    meeting_id, olga, max_, xavier = cast
    answer = {"sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}
    assert (await xavier.call("PUT", f"/meetings/{meeting_id}/media/answer", answer))[0] == 403
    assert (await max_.call("PUT", f"/meetings/{meeting_id}/media/answer", answer))[0] == 404
    status, body = await olga.call("PUT", f"/meetings/{meeting_id}/media/answer", answer)
    assert status == 409 and is_error(body), body  # no offer pending
