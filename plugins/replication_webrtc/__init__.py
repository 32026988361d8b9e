"""WebRTC replication for p2pdb, wire-compatible with RxDB 17.6's ``replicateWebRTC``.

Transport layer: a signaling server (:func:`start_signaling_server`) and aiortc
connection handlers (:func:`aiortc_connection_handler`) that give the replication
pool de-chunked JSON messages per :class:`Peer`.
"""

from .connection import ConnectionHandler, Peer, PeerMessage, aiortc_connection_handler
from .signaling_server import start_signaling_server

__all__ = [
    "ConnectionHandler",
    "Peer",
    "PeerMessage",
    "aiortc_connection_handler",
    "start_signaling_server",
]
