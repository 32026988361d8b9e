"""The identity of a connected peer and its messages (no aiortc needed to use them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pdb.identity import key_fingerprint

from .framing import JSONMessage

__all__ = ["Peer", "PeerMessage"]


@dataclass(frozen=True, slots=True)
class Peer:
    """One data-channel link to a remote peer.

    ``peer_id`` is the remote signaling id. ``connection_id`` names this link
    (the signaling ``connectionId``, or a local token if the remote sent none),
    so a reconnect to the same remote id yields a different, unequal ``Peer``.
    ``initiator`` says whether we opened the link (not part of equality).
    ``public_key`` is the peer's Ed25519 public key (32 bytes) once the handshake verified
    it, ``None`` for a peer that did not authenticate (an RxDB peer) or before the
    handshake (not part of equality: a verified ``Peer`` equals the link's). ``revs``: both
    hellos offered the revs-diff extension (``p2pdb.replication.revs``), so relayed states
    travel as stubs between us (not part of equality).
    """

    peer_id: str
    connection_id: str
    initiator: bool = field(default=False, compare=False)
    public_key: bytes | None = field(default=None, compare=False)
    revs: bool = field(default=False, compare=False)

    @property
    def fingerprint(self) -> str | None:
        """The short printable form of :attr:`public_key` (``ABCD-EFGH-...``), or ``None``."""
        return None if self.public_key is None else key_fingerprint(self.public_key)


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """A de-chunked message from ``peer``: a parsed JSON object or array."""

    peer: Peer
    data: JSONMessage
