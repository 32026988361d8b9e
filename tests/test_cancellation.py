"""A cancellation of the caller that arrives while a close path waits for the tasks it just
cancelled is raised once they ended, never swallowed (p2pdb.tasks).

``task.cancel()`` then ``with suppress(CancelledError): await task`` hands the caller's
cancellation to the task (the caller waits on it), and the task's ``CancelledError`` is then
suppressed as if it were only the task's: ``close()`` returned normally, and whoever was
cancelling the caller (``pause()``, ``cancel()``, a database closing) waited for ever.
Each test cancels the caller at a fixed point: events, or the loop's callback order, no
sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import p2pdb
from p2pdb.plugins.replication_websocket import WebSocketMaster
from p2pdb.replication.gate import RequestGate
from p2pdb.replication.limits import PeerLimits
from p2pdb.replication.rpc import Request, RpcChannel
from p2pdb.tailer import ForeignWriteTailer

WAIT = 10.0


class SlowToEnd:
    """A task's body that, once cancelled, takes its time to end (as one finishing a write
    or a socket's closing handshake does)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.let_go = asyncio.Event()
        self.ended = asyncio.Event()

    async def run(self, *_: object) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            await self.let_go.wait()
            self.ended.set()
            raise


async def assert_cancellation_raised(
    close: Callable[[], Awaitable[None]], cancelled: asyncio.Event, let_go: asyncio.Event
) -> None:
    """Run ``close()``; once its task saw the cancellation (``cancelled``), cancel the
    caller, then let the task end (``let_go``): the caller must end cancelled."""
    closer = asyncio.ensure_future(close())
    async with asyncio.timeout(WAIT):
        await cancelled.wait()  # close() cancelled its task and waits for it to end
    closer.cancel()  # the caller is cancelled meanwhile
    let_go.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await closer  # returned normally before: the cancellation was swallowed
    assert closer.cancelled()


async def assert_cancelled_at_once(close: Callable[[], Awaitable[None]]) -> None:
    """Cancel ``close()``'s caller right after its first step, where it waits for the task
    it cancelled (callbacks run in the order they were scheduled)."""
    closer = asyncio.ensure_future(close())
    asyncio.get_running_loop().call_soon(closer.cancel)
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await closer
    assert closer.cancelled()


class Sink:
    def __init__(self, send: Callable[[object], Awaitable[None]]) -> None:
        self.send = send


async def test_rpc_close_keeps_the_callers_cancellation() -> None:
    slow = SlowToEnd()
    channel = RpcChannel(Sink(slow.run), label="test", token="t")
    await channel.start()
    channel.post({"id": "1", "method": "m", "params": []})
    async with asyncio.timeout(WAIT):
        await slow.started.wait()  # the sender is in the sink
    await assert_cancellation_raised(channel.close, slow.cancelled, slow.let_go)
    assert slow.ended.is_set()  # the sender was waited for to its end
    assert channel.closed and channel.idle.is_set()


async def test_gate_close_keeps_the_callers_cancellation() -> None:
    async def sent(_: object) -> None:
        return None

    slow = SlowToEnd()
    channel = RpcChannel(Sink(sent), label="test", token="t")
    gate = RequestGate(channel, PeerLimits(), slow.run, lambda error: None)
    await gate.start()
    gate.push(Request("1", "masterChangesSince", []))
    async with asyncio.timeout(WAIT):
        await slow.started.wait()  # the request is being served
    await assert_cancellation_raised(gate.close, slow.cancelled, slow.let_go)
    assert slow.ended.is_set() and gate.in_flight == 0
    await channel.close()


@pytest.fixture
async def handshake_only() -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Event]]:
    """A websocket server that opens the connection, reads the client's frames and, once
    the client sent its close frame, holds the closing handshake until ``let_go``."""
    close_frame, let_go = asyncio.Event(), asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        found = re.search(rb"sec-websocket-key: *(\S+)", request, re.IGNORECASE)
        assert found is not None
        magic = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1(found.group(1) + magic).digest())  # noqa: S324
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        opcode = 0
        while opcode != 0x8:  # client frames are masked
            head = await reader.readexactly(2)
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length >= 126:
                length = int.from_bytes(await reader.readexactly(2 if length == 126 else 8))
            await reader.readexactly(4 + length)
        close_frame.set()
        await let_go.wait()
        writer.close()  # no close frame back: the client's close() ends on the lost connection

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}", close_frame, let_go
    finally:
        let_go.set()
        server.close()
        await server.wait_closed()


async def test_websocket_client_close_keeps_the_callers_cancellation(
    handshake_only: tuple[str, asyncio.Event, asyncio.Event],
) -> None:
    url, close_frame, let_go = handshake_only
    master = WebSocketMaster(url, "todos", "token")
    await master.start()
    assert master.connected.is_set()
    # close() cancels the connection task, which closes the socket on its way out: the
    # caller is cancelled while the closing handshake is still under way
    await assert_cancellation_raised(master.close, close_frame, let_go)
    assert master.closed and not master.connected.is_set()


async def test_tailer_close_keeps_the_callers_cancellation(db: p2pdb.Database) -> None:
    tailer = await ForeignWriteTailer(db.storage, lambda events: None).start()
    await assert_cancelled_at_once(tailer.close)
    await tailer.close()  # nothing left to stop


async def test_cleanup_close_keeps_the_callers_cancellation(db: p2pdb.Database) -> None:
    cleanup = await db.start_cleanup()
    completed: list[str] = []
    cleanup.reports.subscribe(on_completed=lambda: completed.append("reports"))
    await assert_cancelled_at_once(cleanup.close)
    assert completed == ["reports"]  # still completed


async def test_abandon_drops_what_the_tasks_raise_but_not_a_cancellation_of_ours() -> None:
    """``p2pdb.tasks.abandon`` in an ``except`` block: a task that fails instead of being
    cancelled must not replace the exception being handled (it turned a cancelled push into
    an error to retry, and ``pause()`` waited forever)."""
    from p2pdb.tasks import abandon

    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("failed on the way out") from None

    task = asyncio.ensure_future(fails_when_cancelled())
    await asyncio.sleep(0)
    await abandon([task])  # nothing raised
    assert task.done() and isinstance(task.exception(), RuntimeError)

    gate = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await gate.wait()  # takes its time to end
            raise

    inner = asyncio.ensure_future(slow_to_end())
    await asyncio.sleep(0)
    outer = asyncio.ensure_future(abandon([inner]))
    await asyncio.sleep(0)
    outer.cancel()  # ours: raised once the task ended
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert inner.cancelled()
