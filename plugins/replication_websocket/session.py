"""One client connection of the replication server: per-collection channels over one socket.

Every frame is untrusted. :func:`~.messages.decode` checks its shape; the collection's
:class:`~p2pdb.replication.rpc.RpcChannel` sorts requests from answers; the replication
wire (:func:`~p2pdb.replication.wire.answer_request`) checks params and documents and serves
them from the collection. A client that breaks the protocol is reported on the server's
``errors`` and disconnected; other clients and the stored data are never affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from reactivex.abc import DisposableBase
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from p2pdb.errors import NotFoundError, P2PDBError, PeerError, ReplicationError
from p2pdb.replication import RESYNC, ChangesBatch, Resync, collection_handler
from p2pdb.replication.gate import RequestGate, UnknownMethods
from p2pdb.replication.rpc import Request, RpcChannel, StreamEvent
from p2pdb.replication.wire import MASTER_METHODS, answer_request, stream_event_json
from p2pdb.tokens import random_token

from .messages import AUTH, CODES, SUBSCRIBE, SocketSink, decode, encode, violation
from .options import ServerOptions

if TYPE_CHECKING:
    from p2pdb import Collection, Database

__all__ = ["ClientSession"]

log = logging.getLogger("p2pdb.websocket.session")

#: The answer RxDB's client can take when a pull failed: an empty batch (a ``null`` result
#: would crash its pull). The ``error`` field next to it is what a p2pdb client reads.
FAILED_PULL_RESULT: dict[str, Any] = {"documents": [], "checkpoint": None}
FLUSH_TIMEOUT = 5.0  # seconds to send the last answers before closing a connection

Report = Callable[[P2PDBError], None]


class _ServedCollection:
    """One collection served to one client: its channel, handler and stream subscription."""

    def __init__(self, session: ClientSession, collection: Collection) -> None:
        self.session = session
        self.handler = collection_handler(collection, origin=f"websocket:{session.id}")
        self.sink = SocketSink(session.socket, collection.name, failed_pull=FAILED_PULL_RESULT)
        self.channel = RpcChannel(
            self.sink,
            label=f"WebSocket client {session.label}",
            token=collection.database.token,
            context={"client": session.label, "collection": collection.name},
            codes=CODES,
            on_idle=self._drained,
            budget=session.options.limits.shared_budget(),
        )
        # its master requests, within the limits (a failing gate raises in the session)
        self.gate = RequestGate(
            self.channel, session.options.limits, session.serve_in(self), lambda _error: None
        )
        self._subscription: DisposableBase | None = None
        self._events_posted = 0
        self._overflowed = False

    def subscribe(self) -> None:
        """Start sending the collection's changes (a second call changes nothing)."""
        if self._subscription is None:
            # the client's own pushes are left out: it has them (the checkpoint moves on)
            self._subscription = self.handler.stream(skip_own=True).subscribe(on_next=self._forward)

    def _forward(self, item: ChangesBatch | Resync) -> None:
        # A slow client does not make the server queue without bound: past the limit,
        # events are dropped and one RESYNC replaces them once the queue drained.
        if self._overflowed:
            return
        queued = self._events_posted - self.sink.events_sent
        if queued >= self.session.options.max_queued_events:
            self._overflowed = True
            log.info("%s is slow; events dropped, RESYNC when drained", self.channel.label)
            return
        self._post(item)

    def _post(self, item: ChangesBatch | Resync) -> None:
        self._events_posted += 1
        self.channel.post_event(stream_event_json(item))

    def _drained(self) -> None:
        if self._overflowed:
            self._overflowed = False
            self._post(RESYNC)

    async def close(self) -> None:
        """Stop the stream and the channel."""
        if self._subscription is not None:
            self._subscription.dispose()
        await self.gate.close()
        await self.channel.close()


class ClientSession:
    """Everything the server does for one connected client. ``run()`` serves it until it
    disconnects (or is disconnected) and then releases everything it holds."""

    def __init__(
        self, db: Database, socket: ServerConnection, options: ServerOptions, report: Report
    ) -> None:
        self.db = db
        self.socket = socket
        self.options = options
        self._report = report
        self.id = random_token(8)
        address = socket.remote_address
        where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "?"
        self.label = f"{where} ({self.id})"
        self.authenticated = options.authenticate is None
        self._served: dict[str, _ServedCollection] = {}
        self._slots = asyncio.Semaphore(options.max_requests_in_flight)
        self._unknown: UnknownMethods | None = None  # one per connection, made on first use

    # -- the connection's life -------------------------------------------------------------

    async def run(self) -> None:
        """Serve frames until the socket closes; then stop everything this client started."""
        try:
            async for frame in self.socket:
                await self._on_frame(frame)
        except PeerError as exc:
            self._reported(exc)
            await self.socket.close(CloseCode.POLICY_VIOLATION, exc.code)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                self._reported(
                    PeerError(
                        f"WebSocket client {self.label} sent a message over "
                        f"{self.options.max_message_size} bytes; disconnected.",
                        code="WEBSOCKET_MESSAGE_TOO_BIG",
                    )
                )
        except Exception as exc:  # a bug here must not take the server down: drop the client
            log.debug("serving %s failed", self.label, exc_info=True)  # reported below, once
            error = ReplicationError(
                f"Serving WebSocket client {self.label} failed: {exc!r}; disconnected.",
                code="WEBSOCKET_SERVER_FAILED",
            )
            self._reported(error)
            await self.socket.close(CloseCode.INTERNAL_ERROR, error.code)
        finally:
            await self._release()

    async def _release(self) -> None:
        for served in self._served.values():
            await served.close()
        self._served.clear()

    def _reported(self, error: P2PDBError) -> None:
        error.parameters.setdefault("client", self.label)
        self._report(error)

    async def _disconnect(self, served: _ServedCollection | None, error: P2PDBError) -> None:
        """Send what is queued (the error answer), then close the connection."""
        self._reported(error)
        if served is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_TIMEOUT):
                    await served.channel.idle.wait()
        ours = not isinstance(error, PeerError | NotFoundError)  # else the client's fault
        await self.socket.close(
            CloseCode.INTERNAL_ERROR if ours else CloseCode.POLICY_VIOLATION, error.code
        )

    # -- incoming --------------------------------------------------------------------------

    async def _on_frame(self, frame: str | bytes) -> None:
        name, message = decode(frame, self.options.limits.max_depth)
        served = self._served.get(name)
        if served is None:
            collection = self.db.collections.get(name)
            if collection is None:
                await self._unknown_collection(name, message)
                return
            served = self._served[name] = _ServedCollection(self, collection)
            await served.channel.start()
            await served.gate.start()
        incoming = served.channel.receive(message)  # raises on a protocol violation
        if isinstance(incoming, StreamEvent):
            raise violation("A client sent a stream event.")
        if incoming is None:
            return  # an answer: the server asks nothing, so receive() already refused it
        if incoming.method == AUTH:
            await self._authenticate(incoming)
        elif not self.authenticated:
            if incoming.method != SUBSCRIBE:  # its id is "stream": an answer would be an event
                served.channel.answer_error(incoming.id, self._unauthorized())
            await self._disconnect(served, self._unauthorized())
        elif incoming.method == SUBSCRIBE:
            served.subscribe()  # never answered: the client reads stream events instead
        elif incoming.method in MASTER_METHODS:
            await self._slots.acquire()  # back-pressure: stop reading while too many run
            try:
                served.gate.push(incoming)
            except PeerError:
                self._slots.release()
                raise
            # ... and while the request waits for the client to read its answers (a client
            # reading nothing for drain_timeout makes this raise: it is disconnected)
            await served.gate.wait_for_queue()
        else:
            if self._unknown is None:
                self._unknown = UnknownMethods(
                    served.channel, self.options.limits, self._reported, _raise
                )
            # answered on its collection's channel; raises once over the error rate
            self._unknown.refuse(incoming, served.channel)

    def serve_in(self, served: _ServedCollection) -> Callable[[Request], Awaitable[None]]:
        """How ``served``'s gate serves a request (and gives the connection's slot back)."""

        async def serve(request: Request) -> None:
            try:
                await self._serve(served, request)
            finally:
                self._slots.release()

        return serve

    async def _serve(self, served: _ServedCollection, request: Request) -> None:
        pull = request.method == "masterChangesSince"
        if pull:
            served.sink.pulls.add(request.id)
        try:
            await answer_request(served.channel, served.handler, request)
        except PeerError as exc:  # the client is broken or hostile
            await self._disconnect(served, exc)
        except P2PDBError as exc:  # our side failed (a closed database)
            if pull:  # RxDB's client retries a failed pull only after a reconnect
                await self._disconnect(served, exc)
            else:
                self._reported(exc)
        finally:
            served.sink.pulls.discard(request.id)

    async def _unknown_collection(self, name: str, message: Mapping[str, Any]) -> None:
        """Answer a request for a collection this server lacks, then disconnect: a client's
        socket serves the collections it asks for, and this one it cannot have."""
        error = NotFoundError(
            f"This server has no collection {name!r}.",
            code="WEBSOCKET_UNKNOWN_COLLECTION",
            collection=name,
        )
        method, request_id = message.get("method"), message.get("id")
        if (
            isinstance(method, str)
            and method not in (AUTH, SUBSCRIBE)
            and isinstance(request_id, str)
        ):
            result = FAILED_PULL_RESULT if method == "masterChangesSince" else None
            answer = {"id": request_id, "result": result, "error": error.to_json()}
            with contextlib.suppress(ConnectionClosed):
                await self.socket.send(encode(answer, name))
        await self._disconnect(None, error)

    async def _authenticate(self, request: Request) -> None:
        check = self.options.authenticate
        if check is None:
            return  # like RxDB's server: headers are ignored unless asked for
        params = request.params
        headers = params[0] if len(params) == 1 else None
        if not isinstance(headers, dict) or len(headers) > 100:
            raise violation("auth takes [headers], headers being an object.")
        try:
            verdict: object = check(headers)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as exc:  # a failing check refuses, it does not crash the server
            log.warning("authenticate() failed for %s: %r", self.label, exc)
            verdict = False
        if verdict is True:
            self.authenticated = True
            return
        await self._disconnect(None, self._unauthorized())

    def _unauthorized(self) -> PeerError:
        return PeerError(
            f"WebSocket client {self.label} is not authenticated (missing or refused "
            "headers); disconnected.",
            code="WEBSOCKET_UNAUTHORIZED",
        )


def _raise(error: PeerError) -> None:
    """Drop the client: the session's ``run`` reports the error and closes (1008)."""
    raise error
