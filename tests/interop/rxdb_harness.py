"""Python side of the RxDB interop harness: real RxDB 17.6 peers and signaling servers in Node.

Used by the interop tests (``test_*.py`` here) and by ``benchmarks/bench_interop.py``:

- :class:`RxdbPeer` runs ``node rxdb_peer.mjs '<config>'`` and speaks its JSON-lines
  protocol (one command per line on stdin, one answer per command on stdout, events too).
- :class:`RxdbSignaling` runs ``node signaling.mjs`` (RxDB's ``startSignalingServerSimplePeer``).
- :class:`RoleProxy` is a WebSocket relay between a p2pdb peer and any signaling server that
  re-rolls the p2pdb side's signaling id until the WebRTC initiator is the side a test wants.
- :func:`open_database` creates p2pdb databases until the token gives the wanted
  replication role (master or fork) against an RxDB peer's storage token.

Every wait has a timeout; child processes are stopped by their own PID only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import p2pdb
from p2pdb.plugins.replication_webrtc import (
    ReplicationPool,
    aiortc_connection_handler,
    is_master,
    replicate_webrtc,
    start_signaling_server,
)
from p2pdb.plugins.replication_webrtc import channels as link_module  # sends frames
from p2pdb.plugins.replication_webrtc.session import PeerSession, SessionSettings
from p2pdb.replication.rpc import STREAM_ID, RpcChannel

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
MIN_NODE_MAJOR = 20

#: An RxDB-style schema as an RxDB app would have it (indexes, nested object, array, bounded
#: numbers, ``additionalProperties``); both sides use it as is.
SCHEMA: dict[str, Any] = {
    "title": "todo",
    "description": "an RxDB app's schema, given to p2pdb unchanged",
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "text": {"type": "string"},
        "done": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000, "multipleOf": 1},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {
            "type": "object",
            "properties": {"owner": {"type": "string"}, "rank": {"type": "number"}},
            "additionalProperties": False,
        },
    },
    "required": ["id", "text", "done", "n"],
    "indexes": ["n", ["done", "n"]],
    "additionalProperties": False,
}

#: The schema of ``driver.mjs`` (RxDB style, used by both sides as is).
DEFAULT_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "text": {"type": "string"},
        "n": {"type": "number"},
    },
    "required": ["id"],
}

START_TIMEOUT = 30.0  # node + rxdb import takes ~1 s; CI machines may be slower
CALL_TIMEOUT = 30.0


class InteropSetupError(RuntimeError):
    """Node or the harness's node_modules are missing (tests turn this into a failure)."""


class RxdbError(RuntimeError):
    """A command answered ``ok: false`` or a Node process misbehaved."""


def node_executable() -> str:
    """The ``node`` to run, after checking Node >= 20 and ``npm ci`` in tests/interop."""
    node = shutil.which("node")
    if node is None:
        raise InteropSetupError(
            "The RxDB interop tests need Node.js >= 20 on PATH (`node` was not found). "
            "Install Node, then run `cd tests/interop && npm ci`."
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < MIN_NODE_MAJOR:
        raise InteropSetupError(
            f"The RxDB interop tests need Node.js >= {MIN_NODE_MAJOR}; {node} is {version!r}."
        )
    missing = [
        name
        for name in ("rxdb", "node-datachannel", "ws", "rxjs")
        if not (NODE_MODULES / name / "package.json").is_file()
    ]
    if missing:
        raise InteropSetupError(
            f"tests/interop/node_modules lacks {', '.join(missing)}: run "
            "`cd tests/interop && npm ci` first (CI's .ci/run does)."
        )
    return node


class NodeChild:
    """A Node script that prints JSON lines: answers ``{"id", "ok", ...}`` and events."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.pid = process.pid
        self.events: list[dict[str, Any]] = []
        self.stderr_tail: deque[str] = deque(maxlen=200)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._event_added = asyncio.Event()
        self._exited = asyncio.Event()
        self._readers = [
            asyncio.ensure_future(self._read_stdout()),
            asyncio.ensure_future(self._read_stderr()),
        ]

    @classmethod
    async def spawn(
        cls, name: str, script: str, *args: str, node_args: tuple[str, ...] = ()
    ) -> Self:
        """Start ``node [node_args] script args`` in tests/interop (``node_args``: options
        of node itself, e.g. ``--cpu-prof``)."""
        node = node_executable()
        process = await asyncio.create_subprocess_exec(
            node,
            *node_args,
            str(HERE / script),
            *args,
            cwd=str(HERE),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=512 * 1024 * 1024,  # `all` of 10,000 docs is one long line
        )
        return cls(name, process)

    # -- reading ---------------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.stderr_tail.append(f"(stdout, not JSON) {line[:200]!r}")
                    continue
                if "event" in message:
                    self.events.append(message)
                    self._event_added.set()
                    continue
                future = self._pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        finally:
            self._exited.set()
            self._event_added.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(self._died())
            self._pending.clear()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(text)
            if os.environ.get("INTEROP_DEBUG"):
                print(f"[{self.name}] {text}", flush=True)

    def _died(self) -> RxdbError:
        tail = "\n".join(list(self.stderr_tail)[-30:])
        return RxdbError(
            f"{self.name} (pid {self.pid}) exited with {self.process.returncode}; "
            f"stderr tail:\n{tail}"
        )

    # -- API -------------------------------------------------------------------------------

    async def wait_event(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        within: float = START_TIMEOUT,
        start: int = 0,
    ) -> dict[str, Any]:
        """The first event from index ``start`` on (already seen or still to come) that
        passes ``predicate``."""
        seen = start
        async with asyncio.timeout(within):
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = max(seen, len(self.events))
                if self._exited.is_set():
                    raise self._died()
                self._event_added.clear()
                await self._event_added.wait()

    async def call(self, cmd: str, within: float = CALL_TIMEOUT, **args: Any) -> Any:
        """Run one command; return its result or raise :class:`RxdbError`."""
        if self._exited.is_set():
            raise self._died()
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps({"id": command_id, "cmd": cmd, **args}) + b"\n")
        await self.process.stdin.drain()
        try:
            async with asyncio.timeout(within):
                answer = await future
        except TimeoutError:
            raise RxdbError(f"{self.name}: {cmd} got no answer within {within} s") from None
        finally:
            self._pending.pop(command_id, None)
        if not answer.get("ok"):
            raise RxdbError(f"{self.name}: {cmd} failed: {answer.get('error')}")
        return answer.get("result")

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def stop(self, within: float = 10.0) -> int | None:
        """SIGTERM this child (by its PID), SIGKILL it if it does not exit in time."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        return await self._reap(within)

    async def kill(self) -> None:
        """SIGKILL this child (by its PID)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self._reap(10.0)

    async def _reap(self, within: float) -> int | None:
        try:
            async with asyncio.timeout(within):
                await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        for reader in self._readers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5.0):
                    await reader
        return self.process.returncode


class RxdbSignaling:
    """RxDB's own signaling server (``signaling.mjs``) on 127.0.0.1."""

    def __init__(self, child: NodeChild, url: str) -> None:
        self.child = child
        self.url = url

    @classmethod
    async def start(cls) -> RxdbSignaling:
        child = await NodeChild.spawn(
            "rxdb-signaling", "signaling.mjs", "0", "127.0.0.1", "--exit-with-stdin"
        )
        try:
            ready = await child.wait_event(lambda e: e["event"] == "ready")
        except BaseException:
            await child.kill()
            raise
        return cls(child, str(ready["url"]))

    async def stop(self) -> None:
        await self.child.stop()


class RxdbPeer(NodeChild):
    """One RxDB 17.6 peer (memory storage + ``replicateWebRTC``); see rxdb_peer.mjs."""

    storage_token: str

    @classmethod
    async def start(  # type: ignore[override]
        cls,
        name: str,
        signaling_url: str,
        topic: str,
        schema: dict[str, Any] | None = None,
        **config: Any,
    ) -> RxdbPeer:
        """Start a peer and wait for its ``ready`` line (it joins ``topic`` at once)."""
        full = {
            "signalingUrl": signaling_url,
            "topic": topic,
            "schema": schema or DEFAULT_SCHEMA,
            "dbName": name.lower(),
            **config,
        }
        peer = await cls.spawn(name, "rxdb_peer.mjs", json.dumps(full))
        try:
            ready = await peer.wait_event(lambda e: e["event"] == "ready")
        except BaseException:
            await peer.kill()
            raise
        peer.storage_token = str(ready["storageToken"])
        return peer

    async def signaling_id(self, within: float = START_TIMEOUT) -> str:
        """The id the signaling server gave this peer most recently."""
        async with asyncio.timeout(within):
            while True:
                seen = len(self.events)
                current = await self.call("signalingPeerId")
                if current:
                    return str(current)
                await self.wait_event(lambda e: e["event"] == "signaling", start=seen)

    def errors(self) -> list[str]:
        """Messages of the ``pool.error$`` events so far."""
        return [str(e.get("message")) for e in self.events if e["event"] == "error"]

    async def quit(self, within: float = 10.0) -> int | None:
        """Ask the peer to close cleanly; SIGKILL it if it does not."""
        if self.running:
            with contextlib.suppress(RxdbError, ConnectionError, TimeoutError):
                await self.call("quit", within=within)
        return await self._reap(within)


class RoleProxy:
    """A WebSocket relay in front of a signaling server that picks its client's peer id.

    The server hands out random ids; the proxy opens upstream sockets (never joined, so no
    peer ever sees them) until ``accept(id)`` holds, forwards that socket's ``init`` to its
    client and then relays every frame verbatim both ways (the server's spoofing check still
    holds). simple-peer's rule is that the side whose *remote* id is greater initiates, so
    a test fixes the WebRTC roles with :meth:`middle` (the RxDB peer) and :meth:`initiator`.
    """

    MAX_TRIES = 500

    def __init__(
        self, upstream_url: str, accept: Callable[[str], bool], signal_delay: float = 0.0
    ) -> None:
        self.upstream_url = upstream_url
        self.accept = accept
        self.signal_delay = signal_delay
        self.rerolls = 0
        self.assigned: list[str] = []
        self._server: Server | None = None

    #: The ids of :meth:`middle` clients lie in ``[MIDDLE_LOW, MIDDLE_HIGH)``.
    MIDDLE_LOW, MIDDLE_HIGH = "h", "t"

    @classmethod
    async def middle(cls, upstream_url: str) -> RoleProxy:
        """Ids in ``[h, t)``, for the RxDB peer of a test that fixes the WebRTC roles."""
        return await cls(upstream_url, lambda own: cls.MIDDLE_LOW <= own < cls.MIDDLE_HIGH).start()

    @classmethod
    async def initiator(
        cls, upstream_url: str, initiator: bool, signal_delay: float = 0.0
    ) -> RoleProxy:
        """Ids that make the client the WebRTC initiator (ids below ``h``) or the responder
        (ids from ``t`` on) towards every :meth:`middle` client, whatever new id that one gets
        when it reconnects. ``signal_delay``: hold each of the client's ``signal`` frames
        that long (a slow signaling path, while the direct UDP path stays fast)."""
        if initiator:
            return await cls(upstream_url, lambda own: own < cls.MIDDLE_LOW, signal_delay).start()
        return await cls(upstream_url, lambda own: own >= cls.MIDDLE_HIGH, signal_delay).start()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def start(self) -> RoleProxy:
        self._server = await serve(self._relay, "127.0.0.1", 0, max_size=None)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _upstream_with_wanted_id(self) -> tuple[ClientConnection, str | bytes]:
        for _ in range(self.MAX_TRIES):
            upstream = await connect(self.upstream_url, max_size=None)
            init = await asyncio.wait_for(upstream.recv(), 10.0)
            own = json.loads(init).get("yourPeerId", "")
            if self.accept(own):
                self.assigned.append(own)
                return upstream, init
            self.rerolls += 1
            await upstream.close()
        raise RuntimeError(f"no acceptable signaling id in {self.MAX_TRIES} tries")

    async def _relay(self, client: ServerConnection) -> None:
        upstream, init = await self._upstream_with_wanted_id()
        async with upstream:
            await client.send(init)

            async def pump(source: Any, sink: Any, delay: float) -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for frame in source:
                        if delay and b'"signal"' in (
                            frame if isinstance(frame, bytes) else frame.encode()
                        ):
                            await asyncio.sleep(delay)
                        await sink.send(frame)

            tasks = [
                asyncio.ensure_future(pump(client, upstream, self.signal_delay)),
                asyncio.ensure_future(pump(upstream, client, 0.0)),
            ]
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await client.close()


async def open_database(
    directory: Path, name: str, *, master_against: str | None = None, want_master: bool = True
) -> p2pdb.Database:
    """Create a p2pdb database file; with ``master_against`` (an RxDB storage token), retry
    fresh files until ``is_master(db.token, master_against) == want_master``."""
    for attempt in range(64):
        path = directory / f"{name}-{attempt}.db"
        db = await p2pdb.create_database(str(path))
        if master_against is None or is_master(db.token, master_against) == want_master:
            return db
        await db.close()
    raise RuntimeError("no database token gave the wanted role in 64 tries")


# -- p2pdb side ----------------------------------------------------------------------------


async def wait_for(
    collection: p2pdb.Collection,
    check: Callable[[], Awaitable[bool]],
    within: float,
    what: str,
) -> None:
    """Wait until ``await check()`` is true, re-checking after every commit to ``collection``."""
    changed = asyncio.Event()
    subscription = collection.changes.subscribe(lambda _event: changed.set())
    try:
        async with asyncio.timeout(within):
            while True:
                changed.clear()
                if await check():
                    return
                await changed.wait()
    except TimeoutError:
        raise TimeoutError(f"{collection.name}: no {what} within {within} s") from None
    finally:
        subscription.dispose()


async def contents(collection: p2pdb.Collection) -> list[dict[str, Any]]:
    """Every live document's user fields, sorted by primary key (like the harness's ``all``)."""
    return [d.to_dict() for d in await collection.find()]


class P2pdbPeer:
    """A p2pdb database file, one collection and its ``replicate_webrtc`` pool."""

    def __init__(self, name: str, db: p2pdb.Database, collection: p2pdb.Collection) -> None:
        self.name = name
        self.db = db
        self.collection = collection
        self.pool: ReplicationPool | None = None
        self.errors: list[Exception] = []

    @classmethod
    async def open(
        cls,
        directory: Path,
        name: str,
        schema: dict[str, Any] | None = None,
        *,
        master_against: str | None = None,
        want_master: bool = True,
        conflict_handler: object = None,
        collection: str = "docs",
    ) -> P2pdbPeer:
        db = await open_database(
            directory, name, master_against=master_against, want_master=want_master
        )
        col = await db.add_collection(
            collection, schema=schema or DEFAULT_SCHEMA, conflict_handler=conflict_handler
        )
        return cls(name, db, col)

    async def replicate(self, signaling_url: str, topic: str, **options: Any) -> ReplicationPool:
        """Join ``topic`` (loopback only, no ICE servers) and replicate the collection."""
        handler = aiortc_connection_handler(
            signaling_url, ice_servers=[], host_addresses=["127.0.0.1"]
        )
        self.pool = await replicate_webrtc(self.collection, topic, handler, **options)
        self.pool.errors.subscribe(self.errors.append)
        return self.pool

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.cancel()
            self.pool = None

    async def close(self) -> None:
        await self.stop()
        if not self.db.closed:
            await self.db.close()

    # -- waits -----------------------------------------------------------------------------

    async def wait_peers(self, count: int, within: float = 20.0) -> list[PeerSession]:
        """Wait until ``count`` peers finished the token exchange (roles known)."""
        pool = self.pool
        assert pool is not None
        try:
            async with asyncio.timeout(within):
                while True:
                    ready = [s for s in pool.sessions.values() if s.is_master is not None]
                    if len(ready) == count and len(pool.sessions) == count:
                        return ready
                    await pool.wait_for_change()
        except TimeoutError:
            raise TimeoutError(
                f"{self.name}: {len(pool.sessions)} peer(s), wanted {count}, after {within} s"
            ) from None

    async def wait_doc(
        self, doc_id: str, equals: dict[str, Any] | None, within: float = 20.0
    ) -> None:
        """Wait until the document equals ``equals`` (``None``: absent or deleted)."""

        async def check() -> bool:
            doc = await self.collection.find_one(doc_id)
            return (doc.to_dict() if doc is not None else None) == equals

        await wait_for(self.collection, check, within, f"{doc_id} == {equals!r}")

    async def wait_count(self, count: int, within: float = 30.0) -> None:
        async def check() -> bool:
            return int(await self.collection.count()) == count

        await wait_for(self.collection, check, within, f"count == {count}")

    async def wait_contents(self, expected: list[dict[str, Any]], within: float = 30.0) -> None:
        async def check() -> bool:
            return await contents(self.collection) == expected

        try:
            await wait_for(self.collection, check, within, "the expected documents")
        except TimeoutError as error:  # say which documents differ
            have = await contents(self.collection)
            missing = [doc for doc in expected if doc not in have][:5]
            unexpected = [doc for doc in have if doc not in expected][:5]
            raise TimeoutError(f"{error}; missing {missing!r}; unexpected {unexpected!r}") from None

    async def wait_in_sync(self, within: float = 30.0) -> None:
        assert self.pool is not None
        async with asyncio.timeout(within):
            await self.pool.wait_for_in_sync()


class WireLog:
    """Every replication message the p2pdb peers of this process sent or received.

    Installed by patching :class:`PeerSession` and :class:`RpcChannel` (tests undo it).
    Entries are ``(direction, settings, message)`` with direction ``"in"`` or ``"out"``;
    ``settings`` is the pool's ``session_settings`` (shared by its sessions).
    """

    def __init__(self) -> None:
        self.entries: list[tuple[str, SessionSettings, dict[str, Any]]] = []
        #: The length of every data-channel frame the p2pdb peers sent, in UTF-16 code units
        #: (JavaScript's string length, which RxDB's 16384 chunk limit counts).
        self.frame_lengths: list[int] = []

    def install(self, setattr_: Callable[[Any, str, Any], None]) -> None:
        log = self.entries
        encode = link_module.encode_message

        def logged_encode(message: object, **kw: Any) -> list[str]:
            frames = encode(message, **kw)
            for frame in frames:
                self.frame_lengths.append(len(frame.encode("utf-16-le", "surrogatepass")) // 2)
            return frames

        setattr_(link_module, "encode_message", logged_encode)
        on_message = PeerSession.on_message

        def logged_on_message(session: PeerSession, data: object) -> None:
            if isinstance(data, dict):
                log.append(("in", session.settings, data))
            on_message(session, data)

        setattr_(PeerSession, "on_message", logged_on_message)
        sessions: dict[int, PeerSession] = {}
        init = PeerSession.__init__

        def logged_init(session: PeerSession, *args: Any) -> None:
            init(session, *args)
            sessions[id(session.channel)] = session

        setattr_(PeerSession, "__init__", logged_init)
        for name in ("post", "post_now"):
            original = getattr(RpcChannel, name, None)
            if original is None:
                continue

            def logged_post(
                channel: RpcChannel, message: object, _original: Any = original
            ) -> None:
                session = sessions.get(id(channel))
                if session is not None and isinstance(message, dict):
                    log.append(("out", session.settings, message))
                _original(channel, message)

            setattr_(RpcChannel, name, logged_post)
        post_event = RpcChannel.post_event

        def logged_post_event(channel: RpcChannel, result: object, **kw: Any) -> None:
            session = sessions.get(id(channel))
            if session is not None:  # stream events: {id: STREAM_ID, result}
                log.append(("out", session.settings, {"id": STREAM_ID, "result": result}))
            post_event(channel, result, **kw)

        setattr_(RpcChannel, "post_event", logged_post_event)

    def requests(
        self, pool: ReplicationPool, direction: str, method: str
    ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """``(request, answer)`` pairs of ``method``: ``direction="out"`` for our requests,
        ``"in"`` for the peer's."""
        answers = {
            m.get("id"): m
            for d, p, m in self.entries
            if p is pool.session_settings and d != direction and "method" not in m
        }
        return [
            (m, answers.get(m.get("id")))
            for d, p, m in self.entries
            if p is pool.session_settings and d == direction and m.get("method") == method
        ]

    def stream_events(self, pool: ReplicationPool, direction: str) -> list[Any]:
        return [
            m.get("result")
            for d, p, m in self.entries
            if p is pool.session_settings and d == direction and m.get("id") == STREAM_ID
        ]


class Stack:
    """Everything one test starts; :meth:`close` stops it all (p2pdb first, then Node)."""

    def __init__(self, tmp_path: Path, rxdb_signaling: Callable[[], str]) -> None:
        self.tmp_path = tmp_path
        self._rxdb_signaling = rxdb_signaling
        self.p2pdb_peers: list[P2pdbPeer] = []
        self.rxdb_peers: list[RxdbPeer] = []
        self.proxies: list[RoleProxy] = []
        self._servers: list[Any] = []

    @staticmethod
    def topic() -> str:
        return f"p2pdb-interop-{secrets.token_hex(6)}"

    async def signaling(self, kind: str) -> str:
        """The URL of a signaling server: ``"p2pdb"`` (a new one) or ``"rxdb"`` (shared)."""
        if kind == "rxdb":
            return str(self._rxdb_signaling())
        server = await start_signaling_server(host="127.0.0.1", port=0)
        self._servers.append(server)
        return server.url

    async def rxdb(
        self,
        name: str,
        signaling_url: str,
        topic: str,
        schema: dict[str, Any] | None = None,
        *,
        middle_id: bool = False,
        **config: Any,
    ) -> RxdbPeer:
        """Start an RxDB peer; ``middle_id``: through a proxy that gives it a signaling id
        in ``[h, t)``, so a p2pdb peer can then be given an id on either side of it."""
        if middle_id:
            proxy = await RoleProxy.middle(signaling_url)
            self.proxies.append(proxy)
            signaling_url = proxy.url
        peer = await RxdbPeer.start(name, signaling_url, topic, schema or SCHEMA, **config)
        self.rxdb_peers.append(peer)
        return peer

    async def p2pdb(self, name: str, schema: dict[str, Any] | None = None, **kw: Any) -> P2pdbPeer:
        peer = await P2pdbPeer.open(self.tmp_path, name, schema or SCHEMA, **kw)
        self.p2pdb_peers.append(peer)
        return peer

    async def initiator_proxy(
        self, signaling_url: str, initiator: bool, signal_delay: float = 0.0
    ) -> str:
        """A signaling URL that makes its client the WebRTC initiator (or the responder)
        towards every RxDB peer started with ``middle_id=True``."""
        proxy = await RoleProxy.initiator(signaling_url, initiator, signal_delay)
        self.proxies.append(proxy)
        return proxy.url

    async def close(self) -> None:
        for p2pdb_peer in self.p2pdb_peers:
            await p2pdb_peer.close()
        for rxdb_peer in self.rxdb_peers:
            await rxdb_peer.quit()
        for proxy in self.proxies:
            await proxy.close()
        for server in self._servers:
            await server.close()
