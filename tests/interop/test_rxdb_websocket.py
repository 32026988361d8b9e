"""WebSocket replication with real RxDB 17.6 (Node, ``rxdb_websocket.mjs``), both ways.

(a) RxDB's ``replicateWithWebsocketServer`` against p2pdb's ``start_replication_server``;
(b) p2pdb's ``replicate_websocket`` against RxDB's ``startWebsocketServer``.

Each way: documents written on each side before and after connecting (inserts, updates,
deletes) converge; a restarted client resumes from its checkpoints (it pulls only what is
new); offline edits conflict and the fork's handler resolves them (larger ``n`` wins, a rule
neither side's default has). Plus several collections over one p2pdb server, and RxDB's
``headers`` reaching p2pdb's ``authenticate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rxdb_harness import SCHEMA, NodeChild, RxdbError, contents, wait_for
from websockets.asyncio.client import connect

import p2pdb
from p2pdb.conflicts import Conflict, FunctionConflictHandler, deep_equal
from p2pdb.plugins.replication_websocket import (
    ClientOptions,
    ServerOptions,
    replicate_websocket,
    start_replication_server,
)

WAIT_MS = 20_000
WAIT = 20.0
FAST = ClientOptions(reconnect_delay=0.1, max_reconnect_delay=1.0)

NOTE_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "key",
    "type": "object",
    "properties": {"key": {"type": "string", "maxLength": 40}, "body": {"type": "string"}},
    "required": ["key", "body"],
}


def todo(doc_id: str, text: str, n: int = 0, **more: Any) -> dict[str, Any]:
    return {"id": doc_id, "text": text, "done": False, "n": n, **more}


def larger_n_wins(conflict: Conflict) -> dict[str, Any]:
    """The fork's rule in these tests (the harness's RxDB ``{"maxField": "n"}``)."""
    new, master = conflict.new_document_state, conflict.real_master_state
    return new if new["n"] > master["n"] else master


class RxdbWebsocket(NodeChild):
    """``node rxdb_websocket.mjs``: an RxDB database serving or replicating over websockets."""

    port: int | None

    @classmethod
    async def start(cls, name: str, **config: Any) -> RxdbWebsocket:  # type: ignore[override]
        config.setdefault("collections", {"todos": SCHEMA})
        child = await cls.spawn(name, "rxdb_websocket.mjs", json.dumps(config))
        try:
            ready = await child.wait_event(lambda e: e["event"] == "ready")
        except BaseException:
            await child.kill()
            raise
        child.port = ready.get("port")
        return child

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def errors(self) -> list[str]:
        return [str(e.get("message")) for e in self.events if e["event"] == "error"]

    async def quit(self) -> None:
        """Ask it to close cleanly, then make sure it exited (SIGTERM, then SIGKILL)."""
        if self.running:
            with contextlib.suppress(RxdbError, ConnectionError, TimeoutError):
                await self.call("quit", within=10.0)
        await self.stop()


@pytest.fixture
async def children() -> AsyncIterator[list[RxdbWebsocket]]:
    started: list[RxdbWebsocket] = []
    yield started
    for child in started:
        await child.quit()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[p2pdb.Database]:
    async with p2pdb.create_database(str(tmp_path / "p2pdb.db")) as database:
        yield database


async def rxdb(children: list[RxdbWebsocket], name: str, **config: Any) -> RxdbWebsocket:
    child = await RxdbWebsocket.start(name, **config)
    children.append(child)
    return child


async def has(collection: p2pdb.Collection, expected: list[dict[str, Any]]) -> None:
    """Wait until ``collection`` holds exactly ``expected`` (sorted by primary key)."""

    async def check() -> bool:
        return await contents(collection) == expected

    await wait_for(collection, check, WAIT, f"{len(expected)} expected documents")


async def edit_both_sides(todos: p2pdb.Collection, rx: RxdbWebsocket) -> None:
    """The same documents edited on both sides while they are apart: ``a`` gets the larger
    ``n`` on RxDB, ``b`` on p2pdb."""
    await rx.call("patch", docId="a", patch={"text": "RxDB's", "n": 5})
    await rx.call("patch", docId="b", patch={"text": "RxDB's", "n": 2})
    for doc_id, n in (("a", 3), ("b", 7)):
        doc = await todos.find_one(doc_id)
        assert doc is not None
        await doc.patch({"text": "p2pdb's", "n": n})


RESOLVED = [todo("a", "RxDB's", 5), todo("b", "p2pdb's", 7)]


# -- (a) RxDB client, p2pdb server ---------------------------------------------------------


async def test_rxdb_client_with_p2pdb_server(
    db: p2pdb.Database, children: list[RxdbWebsocket]
) -> None:
    todos = await db.add_collection("todos", SCHEMA)
    notes = await db.add_collection("notes", NOTE_SCHEMA)
    await todos.insert(todo("py-before", "written on p2pdb before"))
    await notes.insert({"key": "k1", "body": "a p2pdb note"})
    async with await start_replication_server(db, port=0) as server:
        rx = await rxdb(
            children,
            "rx-client",
            mode="client",
            url=server.url,
            collections={"todos": SCHEMA, "notes": NOTE_SCHEMA},
            autostart=False,
        )
        await rx.call("insert", doc=todo("rx-before", "written on RxDB before"))
        await rx.call("startReplication")
        both = [
            todo("py-before", "written on p2pdb before"),
            todo("rx-before", "written on RxDB before"),
        ]
        await rx.call("waitAll", docs=both, timeoutMs=WAIT_MS)
        await has(todos, both)
        # several collections over one server: RxDB opens one socket per collection
        await rx.call(
            "waitAll",
            collection="notes",
            docs=[{"key": "k1", "body": "a p2pdb note"}],
            timeoutMs=WAIT_MS,
        )
        await rx.call("insert", collection="notes", doc={"key": "k2", "body": "an RxDB note"})
        await has(
            notes, [{"key": "k1", "body": "a p2pdb note"}, {"key": "k2", "body": "an RxDB note"}]
        )

        # live, both ways: insert, update, delete on each side
        await rx.call("insert", doc=todo("rx-live", "RxDB insert"))
        await rx.call("patch", docId="py-before", patch={"text": "updated by RxDB", "n": 4})
        await rx.call("remove", docId="rx-before")
        doc = await todos.insert(todo("py-live", "p2pdb insert"))
        await doc.patch({"done": True})
        final = [
            todo("py-before", "updated by RxDB", 4),
            todo("py-live", "p2pdb insert", done=True),
            todo("rx-live", "RxDB insert"),
        ]
        await has(todos, final)
        await rx.call("waitAll", docs=final, timeoutMs=WAIT_MS)
        gone = await todos.find_one("rx-live")
        assert gone is not None
        await gone.remove()
        await rx.call("waitFor", docId="rx-live", equals=None, timeoutMs=WAIT_MS)
        await has(todos, final[:2])
        assert rx.errors() == []


async def test_rxdb_client_resumes_and_resolves_conflicts_with_its_handler(
    db: p2pdb.Database, children: list[RxdbWebsocket]
) -> None:
    todos = await db.add_collection("todos", SCHEMA)
    await todos.bulk_insert([todo(f"d{i:02}", "bulk") for i in range(30)])
    await todos.bulk_insert([todo("a", "base", 1), todo("b", "base", 1)])
    async with await start_replication_server(db, port=0) as server:
        rx = await rxdb(
            children, "rx-client", mode="client", url=server.url, conflictHandler={"maxField": "n"}
        )
        await rx.call("waitCount", count=32, timeoutMs=WAIT_MS)
        await rx.call("awaitInSync", timeoutMs=WAIT_MS)
        assert await rx.call("received") == 32

        # a restarted replication (same identifier) pulls only what is new
        await rx.call("stopReplication")
        await todos.insert(todo("new", "while RxDB was away"))
        await edit_both_sides(todos, rx)
        await rx.call("startReplication")
        await rx.call(
            "waitFor", docId="new", equals=todo("new", "while RxDB was away"), timeoutMs=WAIT_MS
        )
        for doc in RESOLVED:
            await rx.call("waitFor", docId=doc["id"], equals=doc, timeoutMs=WAIT_MS)
        await rx.call("awaitInSync", timeoutMs=WAIT_MS)
        # the new document, b (the master's state, then overwritten by the resolution) and a
        # (its echo after the push, at most): never the 30 others again
        assert 1 <= await rx.call("received") <= 3
        await has(
            todos,
            [
                *RESOLVED,
                *[todo(f"d{i:02}", "bulk") for i in range(30)],
                todo("new", "while RxDB was away"),
            ],
        )


async def test_rxdb_client_reconnects_after_the_p2pdb_server_restarts(
    db: p2pdb.Database, children: list[RxdbWebsocket]
) -> None:
    """RxDB's client reconnects by itself, sends RESYNC and resubscribes: what both sides
    wrote while the server was down converges."""
    todos = await db.add_collection("todos", SCHEMA)
    server = await start_replication_server(db, port=0)
    port = server.port
    try:
        rx = await rxdb(children, "rx-client", mode="client", url=server.url)
        await rx.call("insert", doc=todo("first", "before the restart"))
        await has(todos, [todo("first", "before the restart")])
        await rx.call("awaitInSync", timeoutMs=WAIT_MS)
        await server.close()
        await todos.insert(todo("py-down", "written while the server was down"))
        await rx.call("insert", doc=todo("rx-down", "written while the server was down"))
        server = await start_replication_server(db, port=port)
        expected = [
            todo("first", "before the restart"),
            todo("py-down", "written while the server was down"),
            todo("rx-down", "written while the server was down"),
        ]
        await rx.call("waitAll", docs=expected, timeoutMs=WAIT_MS)
        await has(todos, expected)
        # and live again afterwards, through the new subscription
        await todos.insert(todo("py-after", "after the restart"))
        await rx.call(
            "waitFor",
            docId="py-after",
            equals=todo("py-after", "after the restart"),
            timeoutMs=WAIT_MS,
        )
    finally:
        await server.close()


async def test_rxdb_headers_reach_authenticate(
    db: p2pdb.Database, children: list[RxdbWebsocket]
) -> None:
    todos = await db.add_collection("todos", SCHEMA)
    seen: list[dict[str, Any]] = []

    def authenticate(headers: Any) -> bool:
        seen.append(dict(headers))
        return bool(headers.get("authorization") == "Bearer good")

    options = ServerOptions(authenticate=authenticate)
    async with await start_replication_server(db, port=0, options=options) as server:
        refused: list[str] = []
        server.errors.subscribe(on_next=lambda e: refused.append(e.code))
        bad = await rxdb(
            children, "rx-bad", mode="client", url=server.url, headers={"authorization": "nope"}
        )
        await bad.call("insert", doc=todo("bad", "must not arrive"))
        good = await rxdb(
            children,
            "rx-good",
            mode="client",
            url=server.url,
            headers={"authorization": "Bearer good"},
        )
        await good.call("insert", doc=todo("good", "authenticated"))
        await has(todos, [todo("good", "authenticated")])
        assert {"authorization": "nope"} in seen
        assert "WEBSOCKET_UNAUTHORIZED" in refused
        assert await todos.find_one("bad") is None


# -- (b) p2pdb client, RxDB server ---------------------------------------------------------


async def test_p2pdb_client_with_rxdb_server(
    db: p2pdb.Database, children: list[RxdbWebsocket]
) -> None:
    todos = await db.add_collection("todos", SCHEMA)
    rx = await rxdb(children, "rx-server", mode="server")
    await rx.call("insert", doc=todo("rx-before", "written on RxDB before"))
    await todos.insert(todo("py-before", "written on p2pdb before"))
    state = await replicate_websocket(todos, rx.url, options=FAST)
    errors: list[str] = []
    state.errors.subscribe(on_next=lambda e: errors.append(str(e)))
    async with state:
        both = [
            todo("py-before", "written on p2pdb before"),
            todo("rx-before", "written on RxDB before"),
        ]
        await has(todos, both)
        await rx.call("waitAll", docs=both, timeoutMs=WAIT_MS)

        await rx.call("insert", doc=todo("rx-live", "RxDB insert"))
        await rx.call("patch", docId="py-before", patch={"text": "updated by RxDB", "n": 4})
        await rx.call("remove", docId="rx-before")
        doc = await todos.insert(todo("py-live", "p2pdb insert"))
        await doc.patch({"done": True})
        final = [
            todo("py-before", "updated by RxDB", 4),
            todo("py-live", "p2pdb insert", done=True),
            todo("rx-live", "RxDB insert"),
        ]
        await has(todos, final)
        await rx.call("waitAll", docs=final, timeoutMs=WAIT_MS)
        gone = await todos.find_one("rx-live")
        assert gone is not None
        await gone.remove()
        await rx.call("waitFor", docId="rx-live", equals=None, timeoutMs=WAIT_MS)
        await state.wait_for_in_sync()
        assert errors == []


async def test_p2pdb_client_resumes_and_resolves_conflicts_with_its_handler(
    tmp_path: Path, children: list[RxdbWebsocket]
) -> None:
    rx = await rxdb(children, "rx-server", mode="server")
    await rx.call("insert", doc=todo("a", "base", 1))
    await rx.call("insert", doc=todo("b", "base", 1))
    for i in range(30):
        await rx.call("insert", doc=todo(f"d{i:02}", "bulk"))
    path = str(tmp_path / "client.db")
    handler = FunctionConflictHandler(larger_n_wins, deep_equal)

    async def open_client() -> tuple[p2pdb.Database, p2pdb.Collection]:
        database = await p2pdb.create_database(path)
        return database, await database.add_collection("todos", SCHEMA, conflict_handler=handler)

    database, todos = await open_client()
    try:
        state = await replicate_websocket(todos, rx.url, options=FAST)
        async with state:
            await wait_for(todos, lambda: _count_is(todos, 32), WAIT, "32 documents")
            await state.wait_for_in_sync()
    finally:
        await database.close()

    # apart: RxDB gets a new document; both sides edit a and b
    await rx.call("insert", doc=todo("new", "while p2pdb was away"))
    database, todos = await open_client()
    try:
        await edit_both_sides(todos, rx)
        state = await replicate_websocket(todos, rx.url, options=FAST)
        received: list[str] = []
        resolved: list[str] = []
        state.received.subscribe(on_next=lambda doc: received.append(doc["id"]))
        state.conflicts.subscribe(on_next=lambda c: resolved.append(c.resolved["id"]))
        async with state:
            for doc in RESOLVED:
                await rx.call("waitFor", docId=doc["id"], equals=doc, timeoutMs=WAIT_MS)
            await wait_for(todos, lambda: _count_is(todos, 33), WAIT, "33 documents")
            await state.wait_for_in_sync()
            assert resolved, "p2pdb's handler must have resolved the conflicts"
            assert set(resolved) <= {"a", "b"}
        on_p2pdb = {d["id"]: d for d in await contents(todos)}
        assert [on_p2pdb["a"], on_p2pdb["b"]] == RESOLVED
        assert "new" in received
        assert set(received) <= {"new", "a", "b"}, f"a resumed client pulled {received}"
    finally:
        await database.close()


async def _count_is(collection: p2pdb.Collection, count: int) -> bool:
    return await collection.count() == count


# -- where p2pdb's server differs ----------------------------------------------------------


async def test_unknown_collection_rxdb_server_dies_p2pdb_server_answers(
    db: p2pdb.Database, children: list[RxdbWebsocket]
) -> None:
    """The same request for a collection the server lacks: RxDB 17.6's server throws in an
    async callback and its Node process exits; p2pdb's answers with a typed error and keeps
    serving (see docs/websocket.md)."""
    request = {"id": "r1", "collection": "nope", "method": "masterChangesSince"}
    rx = await rxdb(children, "rx-server", mode="server")
    async with connect(rx.url) as socket:
        await socket.send(json.dumps({**request, "params": [None, 10]}))
        async with asyncio.timeout(WAIT):
            await rx.process.wait()
    assert rx.process.returncode != 0

    todos = await db.add_collection("todos", SCHEMA)
    await todos.insert(todo("kept", "still served"))
    async with await start_replication_server(db, port=0) as server:
        async with connect(server.url) as socket:
            await socket.send(json.dumps({**request, "params": [None, 10]}))
            answer = json.loads(await asyncio.wait_for(socket.recv(), WAIT))
        assert answer["error"]["code"] == "WEBSOCKET_UNKNOWN_COLLECTION"
        assert answer["result"] == {"documents": [], "checkpoint": None}
        async with connect(server.url) as socket:
            await socket.send(json.dumps({**request, "collection": "todos", "params": [None, 10]}))
            answer = json.loads(await asyncio.wait_for(socket.recv(), WAIT))
        assert [d["id"] for d in answer["result"]["documents"]] == ["kept"]
