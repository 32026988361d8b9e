"""WebSocket replication, compatible with RxDB 17's ``replication-websocket`` plugin.

    from p2pdb.plugins.replication_websocket import start_replication_server, replicate_websocket
    server = await start_replication_server(db, host="127.0.0.1", port=8090)  # every collection
    state = await replicate_websocket(todos, "ws://127.0.0.1:8090")          # a ReplicationState

The server serves RxDB apps (``replicateWithWebsocketServer``) and p2pdb clients; the client
replicates with RxDB's ``startWebsocketServer`` or with this server. The protocol logic is the
core's (:mod:`p2pdb.replication.wire`); this plugin maps RxDB's websocket message shapes, owns
the sockets and reconnects, and demultiplexes collections. See docs/websocket.md.
"""

from .client import WebSocketMaster, replicate_websocket
from .messages import CODES
from .options import Authenticate, ClientOptions, ServerOptions
from .server import ReplicationServer, start_replication_server

__all__ = [
    "CODES",
    "Authenticate",
    "ClientOptions",
    "ReplicationServer",
    "ServerOptions",
    "WebSocketMaster",
    "replicate_websocket",
    "start_replication_server",
]
