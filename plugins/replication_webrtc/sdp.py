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
    "split_candidates",
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
    the DTLS client, and sends its ClientHello as soon as ICE connects, which can be before
    a libdatachannel 0.24 offerer (RxDB's node-datachannel) has stored our answer: it then
    checks our certificate against no fingerprint ("DTLS alert: unknown CA"). As the DTLS
    server we answer only the offerer's ClientHello, which narrows that window; the native
    answerer's held candidates (:class:`~.native_candidates.NativeCandidateAdder`) close it.
    RFC 5763 section 5 lets the answerer take either role; every stack accepts both.
    """
    return offer_sdp.replace("a=setup:actpass", "a=setup:active")


def split_candidates(sdp: str) -> tuple[str, list[tuple[str, str | None]]]:
    """``sdp`` without its ``a=candidate`` and ``a=end-of-candidates`` lines, and those
    candidates as ``("candidate:...", mid)`` (the ``a=mid`` of their media section)."""
    kept: list[str] = []
    found: list[tuple[str, int]] = []  # (candidate, its media section)
    mids: dict[int, str] = {}
    section = -1  # the session part, before the first m= line
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            section += 1
        elif line.startswith("a=mid:"):
            mids[section] = line.removeprefix("a=mid:").strip()
        if line.startswith("a=candidate:"):
            found.append((line.removeprefix("a="), section))
        elif not line.startswith("a=end-of-candidates"):
            kept.append(line)
    return "\r\n".join(kept), [(text, mids.get(index) or None) for text, index in found]


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
