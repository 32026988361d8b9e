"""The client: replicate a collection with a websocket replication server.

    state = await replicate_websocket(todos, "ws://127.0.0.1:8090")

The server is RxDB's ``startWebsocketServer`` or p2pdb's
:func:`~p2pdb.plugins.replication_websocket.start_replication_server`. The socket reconnects
with backoff; while it is down, requests fail at once (the replication retries them with its
own backoff), and each new connection starts with a RESYNC, as RxDB's client does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from reactivex import Observable
from reactivex.subject import Subject
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from p2pdb.backoff import Backoff
from p2pdb.errors import P2PDBError, PeerError, ValidationError
from p2pdb.replication import RESYNC, ChangesBatch, ReplicationState, Resync, WriteRow, replicate
from p2pdb.replication.rpc import RpcChannel, StreamEvent
from p2pdb.replication.wire import RemoteMaster, in_arrival_order, parse_stream_event
from p2pdb.tasks import cancel_and_wait
from p2pdb.tokens import random_token

from .messages import AUTH, CODES, SUBSCRIBE, WS_STREAM_ID, SocketSink, decode, violation
from .options import ClientOptions

if TYPE_CHECKING:
    from p2pdb import Collection

__all__ = ["WebSocketMaster", "replicate_websocket"]

log = logging.getLogger("p2pdb.websocket.client")

Report = Callable[[P2PDBError], None]


class WebSocketMaster:
    """The master behind a websocket, as a :class:`~p2pdb.replication.ReplicationHandler`
    for one collection: one socket, reconnected with backoff.

    ``start()`` begins connecting; ``close()`` (or ``async with``) closes the socket and ends
    the reconnect loop. :func:`replicate_websocket` does both for you.
    """

    def __init__(
        self,
        url: str,
        collection: str,
        token: str,
        options: ClientOptions | None = None,
        report: Report | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ValidationError(
                f"A websocket URL starts with ws:// or wss://, got {url!r}.",
                code="WEBSOCKET_URL_INVALID",
            )
        self.url = url
        self.collection = collection
        self.token = token
        self.options = options if options is not None else ClientOptions()
        self.report: Report = report or (lambda error: None)
        self.connected = asyncio.Event()  #: set while a socket is open
        self._attempted = asyncio.Event()  # set once the first connection attempt ended
        self.connections = 0  #: sockets opened so far
        self.last_error: P2PDBError | None = None  #: why the last attempt or socket ended
        self._events: Subject[ChangesBatch | Resync] = Subject()
        self._remote: RemoteMaster | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting (and reconnecting) in the background; returns once the first
        attempt ended (at most ``connect_timeout``), so a first request does not fail only
        because the socket was still opening."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        await self._attempted.wait()

    async def close(self) -> None:
        """Close the socket and stop reconnecting. Idempotent."""
        task = self._task
        if task is None:
            return
        await cancel_and_wait([task])

    @property
    def closed(self) -> bool:
        """True once the connection task ended (after :meth:`close`)."""
        return self._task is not None and self._task.done()

    async def __aenter__(self) -> WebSocketMaster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the handler contract --------------------------------------------------------------

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        """Ask the server for the changes after ``checkpoint``."""
        return await self._current().changes_since(checkpoint, batch_size)

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        """Push ``rows``; the server's conflicting states."""
        return await self._current().write(rows)

    def stream(self) -> Observable[ChangesBatch | Resync]:
        """The server's stream events, and a RESYNC after each (re)connect, in their order
        of arrival relative to the answers."""
        return in_arrival_order(self._events)

    def _current(self) -> RemoteMaster:
        if self._remote is None:  # fail fast: the replication retries with backoff
            why = f" ({self.last_error.message})" if self.last_error is not None else ""
            raise PeerError(
                f"Not connected to {self.url}{why}; reconnecting.",
                code=CODES.peer_gone,
                url=self.url,
            )
        return self._remote

    # -- the socket ------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self.options.reconnect_delay, self.options.max_reconnect_delay)
        loop = asyncio.get_running_loop()
        try:
            while True:
                socket = await self._connect()
                self._attempted.set()
                if socket is not None:
                    opened = loop.time()
                    await self._serve(socket)
                    if loop.time() - opened >= self.options.max_reconnect_delay:
                        backoff.reset()  # a flapping server is not retried at full speed
                await asyncio.sleep(backoff.next_delay())
        finally:
            self._attempted.set()  # a start() still waiting returns
            self._events.on_completed()

    async def _connect(self) -> ClientConnection | None:
        try:
            return await connect(
                self.url,
                open_timeout=self.options.connect_timeout,
                max_size=self.options.max_message_size,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self._lost(
                PeerError(
                    f"Could not connect to {self.url}: {exc or type(exc).__name__}.",
                    code="WEBSOCKET_CONNECT_FAILED",
                    url=self.url,
                )
            )
            return None

    def _lost(self, error: P2PDBError) -> None:
        self.last_error = error
        self.report(error)

    async def _serve(self, socket: ClientConnection) -> None:
        """Use one open socket until it closes."""
        channel = RpcChannel(
            SocketSink(socket, self.collection),
            label=f"WebSocket server {self.url}",
            token=self.token,
            context={"url": self.url},
            codes=CODES,
            request_timeout=self.options.request_timeout,
            budget=self.options.limits.shared_budget(),
        )
        await channel.start()
        if self.options.headers:  # first, as RxDB's client does: a server may require them
            headers = dict(self.options.headers)
            channel.post({"id": random_token(10), "method": AUTH, "params": [headers]})
        channel.post({"id": WS_STREAM_ID, "method": SUBSCRIBE, "params": []})
        self._remote = RemoteMaster(channel, self._events, self.options.limits)
        self.connections += 1
        self.connected.set()
        self._events.on_next(RESYNC)  # events may have been missed while disconnected
        try:
            async for frame in socket:
                self._on_frame(channel, frame)
            raise socket.close_exc  # closed cleanly by the server: still reconnect
        except ConnectionClosed as exc:
            self._lost(
                PeerError(
                    f"The connection to {self.url} closed: {exc}.",
                    code=CODES.peer_gone,
                    url=self.url,
                )
            )
        except PeerError as exc:  # the server broke the protocol: drop this socket
            self._lost(exc)
            await socket.close(1008, exc.code)
        finally:
            self._remote = None
            self.connected.clear()
            await channel.close()  # pending requests fail at once
            await socket.close()

    def _on_frame(self, channel: RpcChannel, frame: str | bytes) -> None:
        name, message = decode(frame, self.options.limits.max_depth)
        if name != self.collection:
            raise violation(f"The server sent a message for collection {name!r}.")
        incoming = channel.receive(message)  # resolves answers; raises on violations
        if isinstance(incoming, StreamEvent):
            self._events.on_next(
                parse_stream_event(incoming.result, CODES, self.options.limits)
            )
        elif incoming is not None:
            raise violation(f"The server sent a request ({incoming.method!r}).")


async def replicate_websocket(
    collection: Collection,
    url: str,
    *,
    replication_id: str | None = None,
    options: ClientOptions | None = None,
) -> ReplicationState:
    """Replicate ``collection`` (the fork) with the same-named collection of the websocket
    replication server at ``url``; returns the running :class:`ReplicationState`.

    ``replication_id`` keys the stored checkpoints; the default, derived from ``url``, is
    the same on every run, so a restarted client resumes where it stopped. Connection
    errors appear on ``state.errors``; ``await state.cancel()`` also closes the socket.
    """
    opts = options if options is not None else ClientOptions()
    collection.database.check_open()  # DATABASE_CLOSED before any connection is made
    master = WebSocketMaster(url, collection.name, collection.database.token, opts)
    await master.start()
    state = replicate(
        collection,
        master,
        replication_id or f"websocket:{url.rstrip('/')}",
        opts.replication,
    )
    master.report = state.errors.on_next
    state.close_on_cancel(master.close)  # the socket goes with the replication
    return state
