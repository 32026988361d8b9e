"""The identity of a connected peer and its messages (no aiortc needed to use them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .framing import JSONMessage

__all__ = ["Peer", "PeerMessage"]


@dataclass(frozen=True, slots=True)
class Peer:
    """One data-channel link to a remote peer.

    ``peer_id`` is the remote signaling id. ``connection_id`` names this link
    (the signaling ``connectionId``, or a local token if the remote sent none),
    so a reconnect to the same remote id yields a different, unequal ``Peer``.
    ``initiator`` says whether we opened the link (not part of equality).
    """

    peer_id: str
    connection_id: str
    initiator: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """A de-chunked message from ``peer``: a parsed JSON object or array."""

    peer: Peer
    data: JSONMessage
