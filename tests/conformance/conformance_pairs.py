"""One fork/master pair per transport, behind one small interface (:class:`Pair`).

A transport is proven by a subclass of :class:`Pair` (``_start``, ``_stop``, ``wait_in_sync``,
``fork_state``, and ``_close_transport`` if something outlives a restart) and one entry in
:data:`TRANSPORTS`; ``InProcessPair`` does all of it for any transport that returns a handler
or a ``ReplicationState``. Each side is a collection in its own real SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
from conformance_tap import WAIT, Tap, TappedHandler
from reactivex import operators as ops
from replication_helpers import wait_equal
from schemas import PEER_SCHEMA

import p2pdb
from p2pdb.errors import P2PDBError
from p2pdb.replication import (
    ReplicationHandler,
    ReplicationOptions,
    ReplicationState,
    collection_handler,
    replicate,
)
from p2pdb.replication.rpc import STREAM_ID
from p2pdb.tokens import random_token

REPLICATION_ID = "conformance"
Doc = dict[str, Any]


@dataclass(frozen=True)
class PairOptions:
    """How a test wants its pair: schemas, the conflict handler of both sides, batch size."""

    master_schema: Doc = field(default_factory=lambda: PEER_SCHEMA)
    fork_schema: Doc = field(default_factory=lambda: PEER_SCHEMA)
    conflict_handler: object = None
    batch_size: int = 100


@dataclass
class Resources:
    """What transports share within a test module (so they are set up once)."""

    tmp_path: Path
    signaling_url: Callable[[], str]  # starts the module's signaling server on first use


class Pair:
    """A master and a fork collection replicating over one transport.

    Tests write to ``master`` and ``fork``, then ``await start()``; ``stop()``/``start()``
    (or ``restart()``) cancel and resume from the stored checkpoints. ``errors`` collects what
    the fork's side reports; ``tap`` counts and disturbs the traffic (None if the transport
    cannot be tapped). ``bad_answer_codes`` are the codes the fork reports for a malformed
    pull answer on this transport.
    """

    transport: ClassVar[str]
    bad_answer_codes: ClassVar[frozenset[str]]
    tappable: ClassVar[bool] = True  # False: tests that need the tap skip, saying why
    untappable_reason: ClassVar[str] = ""

    def __init__(self, resources: Resources, options: PairOptions) -> None:
        self.resources = resources
        self.options = options
        self.tap: Tap | None = Tap() if self.tappable else None
        self.errors: list[Exception] = []
        self._new_error = asyncio.Event()
        self.dbs: list[p2pdb.Database] = []
        self.master: p2pdb.Collection
        self.fork: p2pdb.Collection
        self.running = False

    # -- for subclasses ------------------------------------------------------------------

    async def _open_databases(self) -> tuple[p2pdb.Database, p2pdb.Database]:
        """The master's and the fork's databases (a transport may elect the roles)."""
        return await self._open_db("master"), await self._open_db("fork")

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    @property
    def fork_state(self) -> ReplicationState | None:
        """The fork's :class:`ReplicationState`, where the transport has one."""
        return None

    async def wait_in_sync(self) -> None:
        """Wait until the transport says nothing is left to send either way."""
        raise NotImplementedError

    async def _close_transport(self) -> None:
        """Close what the transport keeps beyond one start/stop (servers, the master's side)."""

    async def pause(self) -> None:
        """Pause the fork's replication, the transport staying connected."""
        state = self.fork_state
        if state is None:
            pytest.skip(f"{self.transport}: no fork state to pause")
        await state.pause()

    async def resume(self) -> None:
        """Resume after :meth:`pause`."""
        assert self.fork_state is not None
        await self.fork_state.start()

    async def re_sync(self) -> None:
        """Make the fork pull everything after its checkpoint again."""
        state = self.fork_state
        if state is None:
            pytest.skip(f"{self.transport}: no way to ask for a RESYNC")
        await state.re_sync()

    # -- common --------------------------------------------------------------------------

    async def _open_db(self, name: str) -> p2pdb.Database:
        db = await p2pdb.create_database(str(self.resources.tmp_path / f"{name}.db"))
        self.dbs.append(db)
        return db

    async def open(self) -> None:
        """Open both databases and their ``todos`` collections."""
        master_db, fork_db = await self._open_databases()
        o = self.options
        self.master = await master_db.add_collection(
            "todos", schema=o.master_schema, conflict_handler=o.conflict_handler
        )
        self.fork = await fork_db.add_collection(
            "todos", schema=o.fork_schema, conflict_handler=o.conflict_handler
        )

    async def start(self) -> None:
        """Start replicating (resuming from the stored checkpoints, if any)."""
        async with asyncio.timeout(WAIT):
            await self._start()
        self.running = True

    async def stop(self) -> None:
        """Cancel the replication; its checkpoints stay."""
        self.running = False
        await self._stop()

    async def restart(self) -> None:
        """Cancel, then resume from the stored checkpoints."""
        await self.stop()
        await self.start()

    async def converged(self) -> None:
        """Wait until both sides hold the same documents and the transport is in sync."""
        await wait_equal(self.master, self.fork, seconds=WAIT)
        async with asyncio.timeout(WAIT):
            await self.wait_in_sync()
        await wait_equal(self.master, self.fork, seconds=WAIT)

    def on_error(self, error: Exception) -> None:
        """Collect an error reported by the fork's side."""
        self.errors.append(error)
        self._new_error.set()

    async def wait_error(self, codes: str | frozenset[str], **parameters: Any) -> P2PDBError:
        """The first reported error with one of ``codes`` (and these parameters)."""
        wanted = frozenset({codes}) if isinstance(codes, str) else codes
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    for error in self.errors:
                        if (
                            isinstance(error, P2PDBError)
                            and error.code in wanted
                            and all(error.parameters.get(k) == v for k, v in parameters.items())
                        ):
                            return error
                    self._new_error.clear()
                    await self._new_error.wait()
        except TimeoutError:
            got = [(getattr(e, "code", e), getattr(e, "parameters", {})) for e in self.errors]
            raise AssertionError(f"no {sorted(wanted)} {parameters} error; got {got}") from None

    def require_tap(self) -> Tap:
        """The tap, or skip: this transport's traffic cannot be observed or disturbed."""
        if self.tap is None:
            pytest.skip(f"{self.transport}: {self.untappable_reason}")
        return self.tap

    async def close(self) -> None:
        """Stop replicating and close both databases."""
        if self.running:
            await self.stop()
        await self._close_transport()
        for db in self.dbs:
            await db.close()


class InProcessPair(Pair):
    """``replicate(fork, collection_handler(master))`` in one event loop."""

    transport = "in_process"
    bad_answer_codes = frozenset({"REPLICATION_BAD_RESPONSE"})

    def __init__(self, resources: Resources, options: PairOptions) -> None:
        super().__init__(resources, options)
        self._state: ReplicationState | None = None

    @property
    def fork_state(self) -> ReplicationState | None:
        return self._state

    async def _handler(self) -> ReplicationHandler:
        """The master as the fork reaches it."""
        assert self.tap is not None
        return TappedHandler(collection_handler(self.master), self.tap)

    async def _start(self) -> None:
        self._state = replicate(
            self.fork,
            await self._handler(),
            REPLICATION_ID,
            batch_size=self.options.batch_size,
            retry_delay=0.01,
            max_retry_delay=0.1,
        )
        self._state.errors.subscribe(self.on_error)

    async def _stop(self) -> None:
        if self._state is not None:
            await self._state.cancel()

    async def wait_in_sync(self) -> None:
        assert self._state is not None
        await self._state.wait_for_in_sync()


class WirePipePair(InProcessPair):
    """The RxDB wire (``p2pdb.replication.rpc``/``wire``) over the in-memory pipe of
    ``p2pdb.replication.testing``: every message is copied through JSON, and passes the tap
    on its way in (the hostile pipe)."""

    transport = "wire_pipe"
    bad_answer_codes = frozenset({"WIRE_BAD_ANSWER"})

    def __init__(self, resources: Resources, options: PairOptions) -> None:
        super().__init__(resources, options)
        self._pipe: Any = None

    async def _handler(self) -> ReplicationHandler:
        from p2pdb.replication.testing import WirePipe

        assert self.tap is not None
        self._pipe = pipe = WirePipe(collection_handler(self.master))
        await pipe.start()
        tap_end(pipe.fork_end, self.tap.to_fork)
        tap_end(pipe.master_end, self.tap.to_master)
        return cast(ReplicationHandler, pipe.handler)

    async def _stop(self) -> None:
        await super()._stop()
        if self._pipe is not None:
            await self._pipe.close()


def tap_end(end: Any, tap: Callable[[object], Any]) -> None:
    """Pass every message arriving at a pipe end through ``tap`` (None = drop it)."""
    receiver = end.receiver

    def tapped(message: object) -> None:
        data = tap(message)
        if data is not None:
            receiver(data)

    end.receiver = tapped


class WebRTCPair(Pair):
    """Two ``replicate_webrtc`` pools on loopback through the module's signaling server.

    Roles are elected per pair from the database tokens (``is_master``), so the databases
    are opened first and the winner becomes ``master``. The master's pool stays up across
    restarts; the fork's pool is canceled and made again (same database token, so the same
    replication id: it resumes from its checkpoints).
    """

    transport = "webrtc"
    bad_answer_codes = frozenset({"WEBRTC_BAD_ANSWER"})

    def __init__(self, resources: Resources, options: PairOptions) -> None:
        super().__init__(resources, options)
        self.topic = f"conformance-{random_token(12)}"
        self._master_pool: Any = None
        self._fork_pool: Any = None
        self.master_errors: list[Exception] = []

    async def _open_databases(self) -> tuple[p2pdb.Database, p2pdb.Database]:
        from p2pdb.plugins.replication_webrtc import is_master

        a, b = await self._open_db("a"), await self._open_db("b")
        return (a, b) if is_master(a.token, b.token) else (b, a)

    async def _pool(self, collection: p2pdb.Collection, tap: Callable[[object], Any]) -> Any:
        from p2pdb.plugins.replication_webrtc import (
            ConnectionHandler,
            PeerMessage,
            aiortc_connection_handler,
            replicate_webrtc,
        )

        # aioice leaves loopback out of its host candidates: name it explicitly
        make = aiortc_connection_handler(
            self.resources.signaling_url(), ice_servers=[], host_addresses=["127.0.0.1"]
        )

        async def tapped(topic: str) -> ConnectionHandler:
            return cast(ConnectionHandler, TappedConnection(await make(topic), tap, PeerMessage))

        return await replicate_webrtc(
            collection, self.topic, tapped, batch_size=self.options.batch_size
        )

    @property
    def fork_state(self) -> ReplicationState | None:
        if self._fork_pool is None:
            return None
        states = list(self._fork_pool.peer_states.values())
        return states[0] if states else None

    async def _start(self) -> None:
        assert self.tap is not None
        if self._master_pool is None:
            self._master_pool = await self._pool(self.master, self.tap.to_master)
            self._master_pool.errors.subscribe(self.master_errors.append)
        self._fork_pool = await self._pool(self.fork, self.tap.to_fork)
        self._fork_pool.errors.subscribe(self.on_error)
        await self._fork_pool.wait_for_first_peer()
        if self.fork_state is None:
            raise AssertionError("the side elected as fork runs no replication")

    async def _stop(self) -> None:
        if self._fork_pool is not None:
            await self._fork_pool.cancel()

    async def wait_in_sync(self) -> None:
        # The fork's view only: a master's wait_for_in_sync() asks its fork to pull again
        # (its acknowledgement), which would fetch what a test dropped on purpose.
        await self._fork_pool.wait_for_in_sync()

    async def _close_transport(self) -> None:
        if self._master_pool is not None:
            await self._master_pool.cancel()


class TappedConnection:
    """A WebRTC connection handler whose incoming messages pass through a tap first: those
    of each link's first channel (``messages``), and those routed to a pool's port (a pool
    reads its collection's port, ports.py)."""

    def __init__(self, inner: Any, tap: Callable[[object], Any], message_type: Any) -> None:
        self._inner = inner
        self._tap = tap

        def through_tap(message: Any) -> Any:
            data = tap(message.data)
            return None if data is None else message_type(message.peer, data)

        self.messages = inner.messages.pipe(
            ops.map(through_tap), ops.filter(lambda m: m is not None)
        )

    def attach(self, port: Any) -> None:
        deliver, tap = port.deliver, self._tap

        def through_tap(channel: Any, message: Any) -> None:
            data = tap(message)
            if data is not None:
                deliver(channel, data)

        port.deliver = through_tap  # the router reads it when it routes a channel here
        self._inner.attach(port)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# --- WebSocket ---------------------------------------------------------------------------
class WebSocketPair(InProcessPair):
    """``replicate_websocket(fork, url)`` against ``start_replication_server(master_db)``,
    through a :class:`WebSocketTapRelay`: real sockets all the way, with the tap between."""

    transport = "websocket"
    bad_answer_codes = frozenset({"WEBSOCKET_BAD_ANSWER"})  # its WireErrorCodes.bad_answer
    _server: Any = None
    _relay: WebSocketTapRelay | None = None

    async def _start(self) -> None:
        from p2pdb.plugins.replication_websocket import (
            ClientOptions,
            replicate_websocket,
            start_replication_server,
        )

        assert self.tap is not None
        if self._server is None:  # the server and relay stay up across restarts of the fork
            self._server = await start_replication_server(
                self.master.database, host="127.0.0.1", port=0
            )
            self._relay = await WebSocketTapRelay.start(self._server.url, self.tap)
        assert self._relay is not None
        replication = ReplicationOptions(
            batch_size=self.options.batch_size, retry_delay=0.01, max_retry_delay=0.1
        )
        self._state = await replicate_websocket(
            self.fork,
            self._relay.url,
            replication_id=REPLICATION_ID,
            options=ClientOptions(replication=replication),
        )
        self._state.errors.subscribe(self.on_error)

    async def _close_transport(self) -> None:
        if self._relay is not None:
            await self._relay.close()
        if self._server is not None:
            await self._server.close()


class WebSocketTapRelay:
    """A WebSocket relay between the fork and the server that passes every RxDB websocket
    message through the tap (RxDB's stream id ``"stream"`` seen as the wire's)."""

    def __init__(self, upstream: str, tap: Tap) -> None:
        self.upstream = upstream
        self.tap = tap
        self.url = ""
        self._server: Any = None

    @classmethod
    async def start(cls, upstream: str, tap: Tap) -> WebSocketTapRelay:
        from websockets.asyncio.server import serve

        relay = cls(upstream, tap)
        relay._server = await serve(relay._relay, "127.0.0.1", 0, max_size=None)
        port = relay._server.sockets[0].getsockname()[1]
        relay.url = f"ws://127.0.0.1:{port}"
        return relay

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _relay(self, client: Any) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.upstream, max_size=None) as server:

            async def pump(source: Any, sink: Any, tap: Callable[[Any], Any]) -> None:
                async for frame in source:
                    message = tap(json.loads(frame))
                    if message is not None:
                        await sink.send(json.dumps(message))

            async with asyncio.TaskGroup() as group:
                up = group.create_task(pump(client, server, self.tap.to_master))
                down = group.create_task(pump(server, client, self._to_fork))
                await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
                up.cancel()
                down.cancel()

    def _to_fork(self, message: Any) -> Any:
        if not isinstance(message, dict) or message.get("id") != "stream":
            return self.tap.to_fork(message)
        tapped = self.tap.to_fork({"id": STREAM_ID, "result": message.get("result")})
        return None if tapped is None else {**message, "result": tapped["result"]}


MakePair = Callable[..., Awaitable[Pair]]  # the make_pair fixture: PairOptions fields -> Pair

TRANSPORTS: dict[str, type[Pair]] = {
    "in_process": InProcessPair,
    "wire_pipe": WirePipePair,
    "websocket": WebSocketPair,
    "webrtc": WebRTCPair,
}


class ThreadedSignaling:
    """A real signaling server on 127.0.0.1 in its own thread and event loop, so one server
    serves every test of a module (each test has its own event loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Any = None

    def _run(self, coroutine: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(WAIT)

    def start(self) -> str:
        """Start the server; its ``ws://`` URL."""
        from p2pdb.plugins.replication_webrtc import start_signaling_server

        self.thread.start()
        self.server = self._run(start_signaling_server(host="127.0.0.1", port=0))
        return str(self.server.url)

    def close(self) -> None:
        """Stop the server, then its loop and thread."""
        if self.server is not None:
            self._run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()
