"""The replication server: every collection of a database, to RxDB and p2pdb clients.

    server = await start_replication_server(db, host="127.0.0.1", port=8090)
    ...
    await server.close()

It is the master side of RxDB 17's websocket replication (``startWebsocketServer``): each
connection may replicate any collection of ``db`` (the ``collection`` field of each message
picks it), each served by :func:`p2pdb.replication.collection_handler`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from reactivex.subject import BehaviorSubject
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import CloseCode

from p2pdb.errors import P2PDBError, PeerError, ReplicationError
from p2pdb.streams import EventStream

from .options import ServerOptions
from .session import ClientSession

if TYPE_CHECKING:
    from p2pdb import Database

__all__ = ["ReplicationServer", "start_replication_server"]

log = logging.getLogger("p2pdb.websocket.server")
READ_AHEAD = 4  # frames websockets buffers per connection before it stops reading


class ReplicationServer:
    """A websocket server replicating the collections of ``db``.

    The constructor starts nothing: ``await server.start()`` (or ``async with``, or the
    :func:`start_replication_server` factory) listens; :meth:`close` disconnects every
    client and stops listening. Misbehaving clients and failed requests are reported on
    :attr:`errors` (and logged); they never stop the server.
    """

    def __init__(
        self,
        db: Database,
        *,
        host: str = "127.0.0.1",
        port: int = 8090,
        options: ServerOptions | None = None,
    ) -> None:
        self.db = db
        self.host = host
        self.requested_port = port
        self.options = options if options is not None else ServerOptions()
        #: Every error of a client or of serving one (typed, with a ``client`` parameter).
        self.errors: EventStream[P2PDBError] = EventStream()
        self.sessions: set[ClientSession] = set()
        #: The number of connected clients, emitted at once and on every change.
        self.client_count: BehaviorSubject[int] = BehaviorSubject(0)
        self._server: Server | None = None

    async def start(self) -> None:
        """Listen (once; a second call does nothing)."""
        if self._server is not None:
            return
        self.db.check_open()
        self._server = await serve(
            self._handle,
            self.host,
            self.requested_port,
            max_size=self.options.max_message_size,
            # frames read ahead of the session: with the requests in flight, this bounds a
            # connection's memory to about (4 + max_requests_in_flight) * max_message_size
            max_queue=READ_AHEAD,
            ping_interval=self.options.ping_interval,
            ping_timeout=self.options.ping_timeout,
        )

    async def __aenter__(self) -> ReplicationServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose for ``port=0``)."""
        if self._server is None:
            raise ReplicationError(
                "The server is not listening; await start() first.",
                code="WEBSOCKET_SERVER_NOT_STARTED",
            )
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``ws://host:port`` for clients."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    async def close(self) -> None:
        """Disconnect every client (code 1001) and stop listening. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close(close_connections=True)
        await server.wait_closed()  # every connection handler has returned

    def report(self, error: P2PDBError) -> None:
        """Publish a client's error on :attr:`errors` (and the log)."""
        log.warning("websocket replication server: %s", error)
        self.errors.on_next(error)

    async def _handle(self, socket: ServerConnection) -> None:
        if len(self.sessions) >= self.options.max_connections:
            self.report(
                PeerError(
                    f"Refused a connection: {self.options.max_connections} are open.",
                    code="WEBSOCKET_TOO_MANY_CONNECTIONS",
                )
            )
            await socket.close(CloseCode.TRY_AGAIN_LATER, "too many connections")
            return
        session = ClientSession(self.db, socket, self.options, self.report)
        self.sessions.add(session)
        self.client_count.on_next(len(self.sessions))
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.client_count.on_next(len(self.sessions))


async def start_replication_server(
    db: Database,
    host: str = "127.0.0.1",
    port: int = 8090,
    *,
    options: ServerOptions | None = None,
) -> ReplicationServer:
    """Serve every collection of ``db`` to websocket replication clients (RxDB's
    ``replicateWithWebsocketServer`` or :func:`replicate_websocket`); returns the listening
    :class:`ReplicationServer`. ``port=0`` lets the OS choose (see ``server.port``)."""
    server = ReplicationServer(db, host=host, port=port, options=options)
    await server.start()
    return server
