"""The facade's contract (control_api/meetings/service.py), which a cluster relay relies on:
each meeting operation is `async def op(principal, meeting_id, ...)`, takes and returns plain
JSON-able data, and refuses with an ApiError carrying the status and body the API answers."""

from __future__ import annotations

import inspect
import json

import pytest

from control_api.auth import Principal
from control_api.errors import ApiError
from control_api.keys import DOMAIN
from control_api.meetings import MEETING_OPERATIONS, MeetingService
from tests.helpers import new_id

from .support import create_meeting, user


def test_every_meeting_operation_takes_the_principal_then_the_meeting_id():
    for name in MEETING_OPERATIONS:
        op = getattr(MeetingService, name)
        assert inspect.iscoroutinefunction(op), name
        assert list(inspect.signature(op).parameters)[:3] == ["self", "principal", "meeting_id"], name


def _relayed(*args):  # noqa: ANN002, ANN202
    """What arrives on the owner node after a trip as JSON."""
    return json.loads(json.dumps(args))


async def test_an_operation_called_by_name_with_json_arguments_answers_as_the_api_does(server):
    room = new_id()
    olga = await user(server, {room: "owner"})
    mid = (await create_meeting(olga, room, "scheduled"))["id"]
    service = server.app[DOMAIN]
    principal = Principal(olga.id, grants={room: "owner"})
    started = await service.call("start_meeting", principal, mid, *_relayed())
    assert _relayed(started)[0] == started  # plain data, unchanged by a trip as JSON
    status, body = await olga.call("GET", f"/meetings/{mid}")
    assert status == 200 and body == started
    assert await service.call("join", principal, mid, *_relayed(olga.ws.queue_id)) == "ACCEPTED"
    # A refusal carries what the API would answer: the same status, code and message.
    with pytest.raises(ApiError) as refused:
        await service.call("update_subscriptions", principal, mid, *_relayed([[olga.id, "video", None]], []))
    own = {"subscribe": [{"userId": olga.id, "type": "video"}], "unsubscribe": []}
    status, body = await olga.call("PUT", f"/meetings/{mid}/media/subscribe", own)
    assert (refused.value.status, refused.value.code, refused.value.message) == (status, body["error"], body["message"])
    outsider = Principal(new_id())
    with pytest.raises(ApiError) as refused:
        await service.call("get_queue", outsider, mid)
    assert refused.value.status == 403
    with pytest.raises(ApiError) as refused:
        await service.call("create_meeting", principal, mid)  # not an operation about one meeting
    assert refused.value.status == 400
