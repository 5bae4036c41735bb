"""aiortc's one receiver gets every simulcast layer: its NACK state must be kept per SSRC (one
generator tracking one highest sequence number reads interleaved layers as huge losses)."""

from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket

from sfu import aiortc_hooks


def _packets():
    # two layers interleaved, each with its own sequence space; layer 2 loses 3 packets
    out = []
    for n in range(50):
        out.append(RtpPacket(payload_type=96, sequence_number=1000 + n, ssrc=1))
        if n not in (20, 21, 22):
            out.append(RtpPacket(payload_type=96, sequence_number=1200 + n, ssrc=2))
    return out


def test_one_generator_for_all_layers_sees_bogus_losses():
    generator = NackGenerator()
    for packet in _packets():
        generator.add(packet)
    assert len(generator.missing) > 3  # why the per-SSRC dispatcher exists


def test_per_ssrc_generator_reports_only_real_losses_with_their_ssrc():
    dispatcher = aiortc_hooks._NackPerSsrc()
    nacks = []
    for packet in _packets():
        if dispatcher.add(packet):
            nacks.append((packet.ssrc, sorted(dispatcher.missing)))
    assert nacks == [(2, [1220, 1221, 1222])]


def test_dispatcher_is_bounded():
    dispatcher = aiortc_hooks._NackPerSsrc()
    for ssrc in range(100):
        dispatcher.add(RtpPacket(payload_type=96, sequence_number=1, ssrc=ssrc))
    assert len(dispatcher._generators) == aiortc_hooks._NackPerSsrc.MAX_SSRCS


async def test_hooks_install_on_a_live_receiver():
    from aiortc import RTCDtlsTransport, RTCRtpReceiver
    from aiortc.rtcdtlstransport import RTCCertificate
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer(iceServers=[])), [RTCCertificate.generateCertificate()])
    receiver = RTCRtpReceiver("video", dtls)
    aiortc_hooks.nack_per_ssrc(receiver)
    assert isinstance(receiver._RTCRtpReceiver__nack_generator, aiortc_hooks._NackPerSsrc)
    aiortc_hooks.map_rtx_ssrc(receiver, 4111, 1111)
    assert receiver._RTCRtpReceiver__rtx_ssrc[4111] == 1111
