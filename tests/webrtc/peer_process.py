"""A p2pdb WebRTC peer in its own OS process, driven by JSON lines.

Run as a script (the child)::

    python peer_process.py --db FILE --signaling ws://127.0.0.1:PORT --topic TOPIC

It opens the SQLite file, adds a ``docs`` collection, joins ``TOPIC`` with
``replicate_webrtc`` (loopback host candidates, no ICE servers) and then obeys one JSON
command per line on stdin, answering with JSON-line events on stdout:

=========================================  ===============================================
command                                    events
=========================================  ===============================================
``{"cmd": "insert", "prefix", "count",     ``{"event": "inserted", "count", "t0", "t1"}``
"size"?, "start"?}`` (one bulk_insert)
``{"cmd": "insert_one", "id", "size"?}``   ``{"event": "inserted_one", "id", "t"}``
``{"cmd": "count"}``                       ``{"event": "count", "count"}``
``{"cmd": "wait_count", "count",           ``{"event": "reached", "count", "t"}`` or
"timeout"?}``                              ``{"event": "wait_timeout", "count"}``
``{"cmd": "in_sync", "timeout"?}``         ``{"event": "in_sync"}`` or ``wait_timeout``
``{"cmd": "stats"}``                       ``{"event": "stats", "pulled", "streamed",
                                           "pushed", "peers"}`` (documents per peer token)
``{"cmd": "quit"}``                        ``{"event": "bye"}``, then the process exits
=========================================  ===============================================

Unprompted events: ``ready`` (token, signaling id), ``peers`` (count, tokens),
``progress`` (live document count, every ``--progress-step``), ``first_sync`` (seconds
from ``replicate_webrtc`` to the first "in sync" with a peer), ``seen`` (id and
``time.monotonic()`` of each change to a document whose id starts with ``--watch-prefix``),
``error`` (code and message of every pool error). Times are ``time.monotonic()``, which on
Linux is one clock for every process of the machine.

Imported as a module (the parent), :class:`ChildPeer` starts and drives such a process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from p2pdb.changes import LOCAL
from p2pdb.tasks import cancel_and_wait

SCRIPT = Path(__file__).resolve()
DOCS_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "text": {"type": "string"},
        "n": {"type": "integer"},
    },
    "required": ["id", "text"],
}
Event = dict[str, Any]


def make_docs(prefix: str, count: int, size: int = 100, start: int = 0) -> list[dict[str, Any]]:
    """``count`` documents ``{prefix}{i:06d}`` of roughly ``size`` bytes of JSON each."""
    filler = "x" * max(0, size - 40)
    return [{"id": f"{prefix}{i:06d}", "text": filler, "n": i} for i in range(start, start + count)]


# -- the child ------------------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.buffer.flush()


def instrument() -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Count the documents this process pulls, receives in stream events and pushes, per
    peer token, by wrapping the fork's request methods (test instrumentation only)."""
    from p2pdb.plugins.replication_webrtc import session as session_module
    from p2pdb.replication.wire import STREAM_ID, RemoteMaster

    pulled: Counter[str] = Counter()
    streamed: Counter[str] = Counter()
    pushed: Counter[str] = Counter()
    original_changes_since = RemoteMaster.changes_since
    original_write = RemoteMaster.write
    original_on_message = session_module.PeerSession.on_message

    def token_of(master: Any) -> str:
        return str(getattr(master, "p2pdb_token", "?"))

    async def changes_since(self: Any, checkpoint: Any, batch_size: int) -> Any:
        batch = await original_changes_since(self, checkpoint, batch_size)
        pulled[token_of(self)] += len(batch.documents)
        return batch

    async def write(self: Any, rows: Any) -> Any:
        result = await original_write(self, rows)
        pushed[token_of(self)] += len(rows)
        return result

    def on_message(self: Any, data: object) -> None:
        if self.is_master is False and isinstance(data, dict) and data.get("id") == STREAM_ID:
            result = data.get("result")
            documents = result.get("documents") if isinstance(result, dict) else None
            if isinstance(documents, list):
                streamed[str(self.token)] += len(documents)
        original_on_message(self, data)

    RemoteMaster.changes_since = changes_since  # type: ignore[method-assign]
    RemoteMaster.write = write  # type: ignore[method-assign]
    session_module.PeerSession.on_message = on_message  # type: ignore[method-assign]

    # the replication id ends with the peer's token: hand it to the fork's handler
    original_replicate = session_module.replicate

    def replicate(collection: Any, handler: Any, replication_id: str, **kwargs: Any) -> Any:
        handler.p2pdb_token = replication_id.rsplit("||", 1)[-1]
        return original_replicate(collection, handler, replication_id, **kwargs)

    session_module.replicate = replicate  # type: ignore[assignment]
    return pulled, streamed, pushed


async def child_main(args: argparse.Namespace) -> None:
    import p2pdb
    from p2pdb.plugins.replication_webrtc import aiortc_connection_handler, replicate_webrtc

    pulled, streamed, pushed = instrument()
    loop = asyncio.get_running_loop()
    db = await p2pdb.create_database(args.db)
    docs = await db.add_collection("docs", schema=DOCS_SCHEMA)
    live = await docs.count()
    changed = asyncio.Event()
    step = args.progress_step
    reported = {"progress": live // step * step if step else 0}

    def on_change(event: Any) -> None:
        nonlocal live
        if event.operation == "INSERT" and not event.document.get("_deleted"):
            live += 1
        elif event.operation == "DELETE":
            live -= 1
        # the watched changes that arrived from a peer (the writer's own would put a
        # print between its commit and the send the latency benchmarks time)
        if args.watch_prefix and event.origin != LOCAL and event.id.startswith(args.watch_prefix):
            emit("seen", id=event.id, t=time.monotonic(), origin=event.origin)
        if step and live >= reported["progress"] + step:
            reported["progress"] = live // step * step
            emit("progress", count=live)
        changed.set()

    docs.changes.subscribe(on_change)
    handler = aiortc_connection_handler(
        args.signaling,
        ice_servers=[],
        host_addresses=["127.0.0.1"],
        connect_timeout=args.connect_timeout,
    )
    options: dict[str, Any] = {}
    if args.heartbeat_interval:
        options["heartbeat_interval"] = args.heartbeat_interval
    if args.heartbeat_timeout:
        options["heartbeat_timeout"] = args.heartbeat_timeout
    started = time.monotonic()
    pool = await replicate_webrtc(docs, args.topic, handler, batch_size=args.batch_size, **options)
    emit("ready", token=db.token, peer_id=pool.connection.own_peer_id, count=live, started=started)

    def on_peers(peers: frozenset[Any]) -> None:
        emit("peers", count=len(peers))

    pool.peers.subscribe(on_peers)
    pool.errors.subscribe(
        lambda error: emit(
            "error", code=getattr(error, "code", type(error).__name__), message=str(error)
        )
    )

    async def first_sync() -> None:
        await pool.wait_for_first_peer()
        await pool.wait_for_in_sync()
        emit("first_sync", seconds=time.monotonic() - started, count=live)

    background = loop.create_task(first_sync())

    async def wait_for(condition: Callable[[], bool], within: float) -> bool:
        try:
            async with asyncio.timeout(within):
                while not condition():
                    changed.clear()
                    await changed.wait()
        except TimeoutError:
            return False
        return True

    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = orjson.loads(line)
            name = command["cmd"]
            if name == "insert":
                batch = make_docs(
                    command["prefix"],
                    command["count"],
                    command.get("size", 100),
                    command.get("start", 0),
                )
                t0 = time.monotonic()
                await docs.bulk_insert(batch)
                emit("inserted", count=len(batch), t0=t0, t1=time.monotonic())
            elif name == "insert_one":
                t = time.monotonic()
                await docs.insert(make_docs(command["id"], 1, command.get("size", 100))[0])
                # reported once the replication's send (which the insert queued) went out:
                # the report is the harness's, not part of the latency it measures
                asyncio.get_running_loop().call_later(
                    0.002, lambda i=command["id"], t=t: emit("inserted_one", id=i, t=t)
                )
            elif name == "count":
                emit("count", count=live)
            elif name == "wait_count":
                target = command["count"]
                if await wait_for(lambda t=target: live >= t, command.get("timeout", 60)):
                    emit("reached", count=live, t=time.monotonic())
                else:
                    emit("wait_timeout", count=live)
            elif name == "in_sync":
                try:
                    async with asyncio.timeout(command.get("timeout", 60)):
                        await pool.wait_for_in_sync()
                    emit("in_sync", count=live)
                except TimeoutError:
                    emit("wait_timeout", count=live)
            elif name == "stats":
                emit(
                    "stats",
                    pulled=dict(pulled),
                    streamed=dict(streamed),
                    pushed=dict(pushed),
                    peers=[s.token for s in pool.sessions.values()],
                )
            elif name == "quit":
                break
            else:
                emit("unknown_command", cmd=name)
    finally:
        await cancel_and_wait([background])
        await pool.cancel()
        await db.close()
        emit("bye")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--signaling", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--heartbeat-interval", type=float, default=0.0)
    parser.add_argument("--heartbeat-timeout", type=float, default=0.0)
    parser.add_argument("--connect-timeout", type=float, default=15.0)
    parser.add_argument("--progress-step", type=int, default=0)
    parser.add_argument("--watch-prefix", default="")
    parser.add_argument("--uvloop", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.run(child_main(args))
    else:
        asyncio.run(child_main(args))


# -- the parent -----------------------------------------------------------------------------


def _open_log(path: Path) -> Any:
    return path.open("ab")


class ChildPeer:
    """A running ``peer_process.py``: send commands, wait for events, kill it.

    Every event is kept in :attr:`events` (in order) and can be awaited with
    :meth:`expect`; stderr goes to ``log_path``.
    """

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.events: list[Event] = []
        self._new = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.ready: Event | None = None

    @classmethod
    async def start(
        cls,
        db: str | Path,
        signaling_url: str,
        topic: str,
        log_path: Path,
        *extra: str,
        python: str = sys.executable,
        ready_within: float = 30.0,
    ) -> ChildPeer:
        """Start a child peer and wait for its ``ready`` event."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with _open_log(log_path) as log:
            process = await asyncio.create_subprocess_exec(
                python,
                str(SCRIPT),
                "--db",
                str(db),
                "--signaling",
                signaling_url,
                "--topic",
                topic,
                *extra,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                limit=2**24,
            )
        peer = cls(process, log_path)
        try:
            peer.ready = await peer.expect("ready", within=ready_within)
        except BaseException:
            await peer.kill()
            raise
        return peer

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def token(self) -> str:
        assert self.ready is not None
        return str(self.ready["token"])

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                self.events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                self.events.append({"event": "garbage", "line": line.decode(errors="replace")})
            self._new.set()
        self.events.append({"event": "exited"})
        self._new.set()

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps({"cmd": cmd, **fields}) + b"\n")

    async def expect(
        self,
        event: str,
        predicate: Callable[[Event], bool] = lambda _e: True,
        *,
        within: float = 30.0,
        after: int = 0,
    ) -> Event:
        """The first event named ``event`` (at index ``after`` or later) that satisfies
        ``predicate``; fails with the child's log if none comes ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                index = after
                while True:
                    while index < len(self.events):
                        found = self.events[index]
                        index += 1
                        if found["event"] == event and predicate(found):
                            return found
                        if found["event"] == "exited":
                            raise AssertionError(
                                f"child {self.pid} exited while waiting for {event!r}:\n"
                                + self.log_tail()
                            )
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            raise AssertionError(
                f"child {self.pid}: no {event!r} event within {within} s; last events "
                f"{self.events[-5:]}\n{self.log_tail()}"
            ) from None

    async def request(self, cmd: str, reply: str, *, within: float = 30.0, **fields: Any) -> Event:
        """Send a command and wait for its reply event (one issued after the command)."""
        after = len(self.events)
        self.send(cmd, **fields)
        return await self.expect(reply, within=within, after=after)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    async def kill(self) -> None:
        """SIGKILL the child (by its PID) and reap it."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        await self._finish_reader()

    async def quit(self, within: float = 20.0) -> None:
        """Ask the child to stop; SIGKILL it if it does not exit in time."""
        if self.process.returncode is None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send("quit")
            try:
                async with asyncio.timeout(within):
                    await self.process.wait()
            except TimeoutError:
                await self.kill()
        await self._finish_reader()

    async def _finish_reader(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        if not self._reader.done():
            self._reader.cancel()
        if self.process.stdin is not None:
            self.process.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self.process.stdin.wait_closed()


if __name__ == "__main__":
    main()
