"""The SDP details p2pdb adjusts or reads: which fingerprint we offer, and the remote's
``max-message-size`` (which bounds our frame size)."""

from __future__ import annotations

import re

from aiortc import RTCPeerConnection

__all__ = [
    "answer_as_dtls_server",
    "dtls_fingerprint",
    "frame_limit",
    "local_sdp",
    "sha256_fingerprint_only",
]

_MAX_MESSAGE_SIZE_RE = re.compile(r"^a=max-message-size:(\d+)", re.MULTILINE)
_SHA256_FINGERPRINT = "a=fingerprint:sha-256 "
_FINGERPRINT_RE = re.compile(r"^a=fingerprint:(\S+) ([0-9A-Fa-f:]+)\s*$", re.MULTILINE)


def local_sdp(pc: RTCPeerConnection) -> str:
    """Our local description's SDP, with the sha-256 fingerprint only."""
    description = pc.localDescription
    assert description is not None
    return sha256_fingerprint_only(description.sdp)


def sha256_fingerprint_only(sdp: str) -> str:
    """Keep only the ``a=fingerprint:sha-256`` line(s) of our SDP.

    aiortc lists sha-256, sha-384 and sha-512 fingerprints. libdatachannel (RxDB's
    node-datachannel, 0.24.x) keeps only the last one (sha-512), yet when ICE connects before
    it has committed our description (our ICE checks reach it before our answer does, which
    a slower signaling path makes likely) it verifies our certificate with its default,
    SHA-256, and then fails the handshake ("DTLS alert: unknown CA"). Every WebRTC stack
    supports sha-256 (browsers send only that one), so we offer that one alone.
    """
    lines = sdp.split("\r\n")
    if not any(line.lower().startswith(_SHA256_FINGERPRINT) for line in lines):
        return sdp
    return "\r\n".join(
        line
        for line in lines
        if not line.lower().startswith("a=fingerprint:")
        or line.lower().startswith(_SHA256_FINGERPRINT)
    )


def answer_as_dtls_server(offer_sdp: str) -> str:
    """The remote's offer as our native engine should read it, so that it answers
    ``a=setup:passive`` (the DTLS server) instead of ``active``.

    An offer says ``actpass``: the answerer chooses. libdatachannel always chooses active,
    the DTLS client, and sends its ClientHello as soon as ICE connects. Our ICE checks reach
    the offerer before our answer does (the signaling server is the slower path), and
    libdatachannel 0.24 (RxDB's node-datachannel) then verifies our certificate before it
    has our fingerprint: "DTLS alert: unknown CA", a failed connection and a retry. Read as
    ``active``, the offer makes libdatachannel answer ``passive``; the offerer becomes the
    DTLS client, which it can only be once it has our answer, fingerprint included
    (RFC 5763 section 5 lets the answerer take either role; every stack accepts both).
    """
    return offer_sdp.replace("a=setup:actpass", "a=setup:active")


def frame_limit(remote_sdp: str, wanted: int) -> int:
    """Our frame size, lowered if the remote announces a smaller ``max-message-size``."""
    match = _MAX_MESSAGE_SIZE_RE.search(remote_sdp)
    announced = int(match.group(1)) if match else 65536  # RFC 8841 default
    return wanted if announced == 0 else max(1024, min(wanted, announced))


def dtls_fingerprint(sdp: str) -> str | None:
    """The DTLS certificate fingerprint an SDP announces, normalized as
    ``"sha-256 AB:CD:..."`` (the sha-256 one when there are several; ``None`` if none)."""
    found = [(algo.lower(), value.upper()) for algo, value in _FINGERPRINT_RE.findall(sdp)]
    if not found:
        return None
    algo, value = next((f for f in found if f[0] == "sha-256"), found[0])
    return f"{algo} {value}"
