"""Floods from a hostile client against a websocket replication server (issue #14).

The server is a real child process (``server_process.py``: SQLite file holding 3,000
documents of ~300 bytes), so its memory and CPU are its own (``/proc/<pid>``). The client is
a raw websocket that speaks the protocol by hand and reads nothing.

Measured on this machine (2 cores, shared), 400 ``masterChangesSince(null, 10000)`` sent at
once, none of the answers read:

- before PeerLimits: the server kept reading requests (a request's slot was freed once its
  answer was queued, not sent) and queued every answer: RSS 44 -> 408 MB within 40 s,
  and the client stayed connected;
- with PeerLimits: the server stops reading while answers wait, and drops the client once
  nothing was read for ``drain_timeout`` (2 s here): ``WEBSOCKET_PEER_OVER_LIMIT``, RSS
  44 -> 73 MB (bound asserted: +150 MB).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from process_stats import PeakRss, cpu_seconds
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from ws_helpers import RawClient

import p2pdb
from p2pdb.errors import PeerError
from p2pdb.plugins.replication_websocket import ClientOptions, replicate_websocket
from p2pdb.tasks import cancel_and_wait

SCRIPT = Path(__file__).resolve().parent / "server_process.py"
RSS_BOUND_MB = 150
pytestmark = pytest.mark.slow


class ServerProcess:
    """The child server: its port, and its JSON-line events as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.port = 0

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.events.append(orjson.loads(line))
            self._new.set()

    async def expect(self, event: str, code: str | None = None, within: float = 60) -> Any:
        async with asyncio.timeout(within):
            while True:
                for found in self.events:
                    if found["event"] == event and code in (None, found.get("code")):
                        return found
                self._new.clear()
                await self._new.wait()

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "error"]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            async with asyncio.timeout(20):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await cancel_and_wait([self._reader])


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    log = (tmp_path / "server.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--db",
        str(tmp_path / "server.db"),
        "--drain-timeout",
        "2",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    child = ServerProcess(process)
    try:
        child.port = (await child.expect("ready"))["port"]
        yield child
    finally:
        await child.stop()
        log.close()
        child.log = (tmp_path / "server.log").read_text()  # type: ignore[attr-defined]


def request(request_id: str, method: str, params: Any) -> bytes:
    return orjson.dumps(
        {"id": request_id, "collection": "todos", "method": method, "params": params}
    )


async def test_a_request_flood_is_bounded_and_the_client_dropped(server: ServerProcess) -> None:
    """400 pulls of everything, never read: the server's RSS stays within +150 MB
    (measured 44 -> 73 MB; 44 -> 408 MB before PeerLimits) and the client is dropped."""
    raw = await RawClient.connect(server.url, max_queue=1)  # buffer one frame, then stop
    async with PeakRss(server.process.pid) as rss:
        for i in range(400):
            await raw.socket.send(request(f"r{i}", "masterChangesSince", [None, 10_000]))
        error = await server.expect("error", "WEBSOCKET_PEER_OVER_LIMIT")
    print(f"websocket request flood: RSS {rss.before:.0f} MB -> peak {rss.peak:.0f} MB")
    assert rss.growth < RSS_BOUND_MB, (rss.before, rss.peak)
    assert error["limit"] == "drain_timeout"
    # the connection is gone: reading what was buffered ends with the close (or the abort)
    async with asyncio.timeout(90):
        with contextlib.suppress(ConnectionClosed):
            while True:
                await raw.socket.recv()
    assert [e["code"] for e in server.errors()] == ["WEBSOCKET_PEER_OVER_LIMIT"]


async def test_unknown_methods_flood_few_reports_bounded_cpu(server: ServerProcess) -> None:
    """20,000 unknown-method requests: dropped after 20 within the window, 5 reports and
    one drop instead of 20,000 warnings, a fraction of a second of CPU."""
    raw = await RawClient.connect(server.url)
    cpu_before = cpu_seconds(server.process.pid)
    with contextlib.suppress(Exception):  # the server closes the socket mid-flood
        for i in range(20_000):
            await raw.socket.send(request(f"u{i}", "dropTables", []))
    error = await server.expect("error", "WEBSOCKET_PEER_OVER_LIMIT")
    assert error["limit"] == "max_errors"
    async with asyncio.timeout(30):
        await raw.socket.wait_closed()
    assert raw.socket.close_code == 1008
    cpu = cpu_seconds(server.process.pid) - cpu_before
    print(f"websocket unknown-method flood: {len(server.errors())} reports, {cpu:.2f} s CPU")
    codes = [e["code"] for e in server.errors()]
    assert codes == ["WEBSOCKET_PROTOCOL_VIOLATION"] * 5 + ["WEBSOCKET_PEER_OVER_LIMIT"]
    assert cpu < 5.0


async def test_a_deeply_nested_frame_drops_the_client(server: ServerProcess) -> None:
    raw = await RawClient.connect(server.url)
    deep = "[" * 5000 + "]" * 5000
    await raw.socket.send(
        f'{{"id":"d","collection":"todos","method":"masterWrite","params":{deep}}}'
    )
    error = await server.expect("error", "WEBSOCKET_PEER_OVER_LIMIT")
    assert error["limit"] == "max_depth"
    assert await raw.closed_with() == 1008
    # the server still serves others
    other = await RawClient.connect(server.url)
    answer = await other.request("masterChangesSince", [None, 1])
    assert [d["id"] for d in answer["result"]["documents"]] == ["doc-000000"]
    await other.close()


async def test_a_client_refuses_a_30_mb_checkpoint(tmp_path: Path) -> None:
    """A hostile server answers every pull with a 30 MB checkpoint: the p2pdb client
    refuses it with ``WEBSOCKET_PEER_OVER_LIMIT``; nothing is stored."""
    huge = {"pad": "x" * (30 << 20)}

    async def hostile(socket: ServerConnection) -> None:
        async for frame in socket:
            message = orjson.loads(frame)
            if message.get("method") == "masterChangesSince":
                result = {"documents": [{"id": "evil", "text": "t"}], "checkpoint": huge}
            elif message.get("method") == "masterWrite":
                result = []
            else:
                continue
            answer = {"id": message["id"], "collection": "todos", "result": result}
            await socket.send(orjson.dumps(answer).decode())

    async with (
        serve(hostile, "127.0.0.1", 0, max_size=None) as master,
        p2pdb.create_database(str(tmp_path / "fork.db")) as db,
    ):
        todos = await db.add_collection("todos", schema=SCHEMA)
        port = master.sockets[0].getsockname()[1]
        seen: list[Exception] = []
        failed = asyncio.Event()
        state = await replicate_websocket(
            todos, f"ws://127.0.0.1:{port}", replication_id="hostile", options=ClientOptions()
        )
        state.errors.subscribe(lambda e: (seen.append(e), failed.set()))
        async with asyncio.timeout(60):
            await failed.wait()
        await state.cancel()
        assert isinstance(seen[0], PeerError) and seen[0].code == "WEBSOCKET_PEER_OVER_LIMIT"
        assert db.storage.get_checkpoint("todos", "hostile", "down") is None
        assert await todos.find_one("evil") is None


SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {"id": {"type": "string", "maxLength": 100}, "text": {"type": "string"}},
    "required": ["id", "text"],
}
