"""Simulcast in SDP: a publisher's rid/simulcast offer read from the text, our answer completed with
`a=rid:<rid> recv` and `a=simulcast:recv` in the offer's order, `~` markers kept."""

from sfu.simulcast_sdp import REPAIRED_RID_URI, RID_URI, add_simulcast_answer, parse_simulcast

OFFER = "\r\n".join([
    "v=0",
    "o=- 1 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "c=IN IP4 0.0.0.0",
    "a=mid:0",
    "a=sendonly",
    "a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid",
    f"a=extmap:10 {RID_URI}",
    f"a=extmap:11 {REPAIRED_RID_URI}",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rid:q send",
    "a=rid:h send",
    "a=rid:f send max-width=1280",
    "a=simulcast:send q;~h;f",
    "",
])

ANSWER = "\r\n".join([
    "v=0",
    "o=- 3 4 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "a=mid:0",
    "a=recvonly",
    "",
])


def test_offer_layers_in_simulcast_order_with_extension_ids():
    offer = parse_simulcast(OFFER, 0)
    assert offer is not None
    assert offer.rids == ("q", "h", "f")
    assert offer.recv_list == "q;~h;f"
    assert (offer.mid, offer.rid_ext, offer.repaired_rid_ext) == ("0", 10, 11)


def test_answer_accepts_every_layer_once():
    offer = parse_simulcast(OFFER, 0)
    answer = add_simulcast_answer(ANSWER, offer)
    lines = answer.split("\r\n")
    assert [ln for ln in lines if ln.startswith("a=rid:")] == ["a=rid:q recv", "a=rid:h recv", "a=rid:f recv"]
    assert [ln for ln in lines if ln.startswith("a=simulcast:")] == ["a=simulcast:recv q;~h;f"]
    assert answer.endswith("\r\n")
    assert add_simulcast_answer(answer, offer) == answer  # idempotent


def test_one_encoding_is_not_simulcast():
    single = OFFER.replace("a=simulcast:send q;~h;f", "a=simulcast:send q")
    assert parse_simulcast(single, 0) is None
    assert parse_simulcast(OFFER.replace("a=simulcast:send q;~h;f\r\n", ""), 0) is None
    assert parse_simulcast(OFFER, 3) is None
    assert parse_simulcast(OFFER.replace(f"a=extmap:10 {RID_URI}\r\n", ""), 0) is None  # no rid: no binding


def test_undeclared_rids_alternatives_and_extra_layers_are_left_out():
    text = OFFER.replace("a=simulcast:send q;~h;f", "a=simulcast:send x;q,h;f;h;z")
    text = text.replace("a=rid:q send", "a=rid:q send\r\na=rid:z send")
    offer = parse_simulcast(text, 0)
    # x is not declared; "q,h" keeps its first alternative; h (seen) and z (fourth) left out
    assert offer.rids == ("q", "f", "h")
    assert offer.recv_list == "q;f;h"
