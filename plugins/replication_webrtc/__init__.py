"""WebRTC replication for p2pdb, wire-compatible with RxDB 17.6's ``replicateWebRTC``.

    server = await start_signaling_server(host="127.0.0.1", port=8080)
    handler = aiortc_connection_handler("ws://127.0.0.1:8080", ice_servers=[])
    pool = await replicate_webrtc(todos, "my-app-room", handler)
    await pool.wait_for_in_sync()

The signaling server only introduces peers; documents travel directly between peers over
aiortc data channels, in RxDB 17's message format.
"""

from .connection import ConnectionHandler
from .election import is_master, sha256_hex
from .handler_factory import ConnectionOptions, aiortc_connection_handler
from .options import WebRTCReplicationOptions
from .peer import Peer, PeerMessage
from .pool import ReplicationPool, replicate_webrtc
from .signal_crypto import TopicSecret
from .signaling_limits import CloseReason, SignalingServerOptions, bearer_token
from .signaling_server import SignalingServer, start_signaling_server

__all__ = [
    "CloseReason",
    "ConnectionHandler",
    "ConnectionOptions",
    "Peer",
    "PeerMessage",
    "ReplicationPool",
    "SignalingServer",
    "SignalingServerOptions",
    "TopicSecret",
    "WebRTCReplicationOptions",
    "aiortc_connection_handler",
    "bearer_token",
    "is_master",
    "replicate_webrtc",
    "sha256_hex",
    "start_signaling_server",
]
