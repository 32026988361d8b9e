"""The replication wire over a WebRTC data channel: the sink and the error codes.

The protocol itself is :mod:`p2pdb.replication.rpc` and :mod:`p2pdb.replication.wire`;
RxDB's WebRTC replication uses its message shapes unchanged, so this adapter only delivers
messages through the connection handler.
"""

from __future__ import annotations

from typing import Protocol

from p2pdb.replication.lanes import FlushGauge
from p2pdb.replication.rpc import WireErrorCodes

from .peer import Peer

__all__ = ["WEBRTC_CODES", "PeerSink", "PeerSender"]

#: The error codes of requests over WebRTC (unchanged since before the wire moved).
WEBRTC_CODES = WireErrorCodes(
    "WEBRTC_REQUEST_TIMEOUT",
    "WEBRTC_PEER_GONE",
    "WEBRTC_REMOTE_ERROR",
    "WEBRTC_BAD_ANSWER",
    "WEBRTC_PROTOCOL_VIOLATION",
    "WEBRTC_INVALID_DATA",
    "WEBRTC_PEER_OVER_LIMIT",
)


class PeerSender(Protocol):
    """What a sink needs of the connection handler."""

    async def send(self, peer: Peer, message: object) -> None:
        """Send ``message`` to ``peer`` (raises ``WEBRTC_PEER_GONE`` if it is gone)."""
        ...

    def gauge_for(self, peer: Peer) -> FlushGauge | None:
        """The :class:`FlushGauge` of ``peer``'s channel (``None``: not connected)."""
        ...


class PeerSink:
    """A :class:`~p2pdb.replication.rpc.MessageSink` to one peer of a connection handler."""

    def __init__(self, connection: PeerSender, peer: Peer) -> None:
        self.connection = connection
        self.peer = peer

    async def send(self, message: object) -> None:
        """Send ``message`` to the peer (chunked and flow controlled by the handler)."""
        await self.connection.send(self.peer, message)

    # its channel's FlushGauge: urgent frames overtake the frames aiortc queues (sctp_flush)

    def handed(self) -> int:
        """Bytes of frames sent in order on the peer's channel (0: not connected)."""
        gauge = self.connection.gauge_for(self.peer)
        return 0 if gauge is None else gauge.handed()

    def flushed(self) -> int:
        """Of those, the bytes past the channel's buffer (0: not connected)."""
        gauge = self.connection.gauge_for(self.peer)
        return 0 if gauge is None else gauge.flushed()
