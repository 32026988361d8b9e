"""The SDP adjustments of ``plugins/replication_webrtc/sdp.py``, on real SDP from aiortc.
The engines' own tests check the same through real connections (test_native_replication)."""

from __future__ import annotations

from aiortc import RTCPeerConnection

from p2pdb.plugins.replication_webrtc.sdp import (
    answer_as_dtls_server,
    dtls_fingerprint,
    frame_limit,
    sha256_fingerprint_only,
)


async def offer_sdp() -> str:
    pc = RTCPeerConnection()
    try:
        pc.createDataChannel("p2pdb")
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def test_an_offer_is_read_as_active_so_that_the_answer_is_passive() -> None:
    offer = await offer_sdp()
    assert "a=setup:actpass" in offer
    read = answer_as_dtls_server(offer)
    assert "a=setup:actpass" not in read and "a=setup:active" in read
    # nothing else changes; an offer that already chose a role is left as it is
    assert read.replace("a=setup:active", "a=setup:actpass") == offer
    passive = offer.replace("a=setup:actpass", "a=setup:passive")
    assert answer_as_dtls_server(passive) == passive


async def test_only_the_sha256_fingerprint_is_offered() -> None:
    offer = await offer_sdp()
    assert "a=fingerprint:sha-512" in offer
    kept = sha256_fingerprint_only(offer)
    assert [line for line in kept.split("\r\n") if line.startswith("a=fingerprint:")] == [
        line for line in offer.split("\r\n") if line.startswith("a=fingerprint:sha-256 ")
    ]
    assert dtls_fingerprint(kept) == dtls_fingerprint(offer)
    assert dtls_fingerprint(kept) is not None and dtls_fingerprint(kept).startswith("sha-256 ")  # type: ignore[union-attr]


def test_frame_limit_follows_the_remote_max_message_size() -> None:
    assert frame_limit("a=max-message-size:16384\r\n", 60_000) == 16_384
    assert frame_limit("a=max-message-size:0\r\n", 60_000) == 60_000  # 0: any size
    assert frame_limit("a=max-message-size:10\r\n", 60_000) == 1024  # never below 1 KiB
    assert frame_limit("", 100_000) == 65_536  # RFC 8841's default
