"""p2pdb client <-> p2pdb server over real websockets on 127.0.0.1.

Both directions (insert, update, delete), several collections over one server, a client that
resumes from its checkpoints after a restart, reconnecting after the server restarts (with a
RESYNC), failing fast while disconnected, and cancel() closing the socket.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from replication_helpers import contents, wait_equal
from schemas import PEER_SCHEMA, TODO_SCHEMA
from ws_helpers import WAIT, Errors

import p2pdb
from p2pdb.errors import PeerError, ValidationError
from p2pdb.plugins.replication_websocket import (
    ClientOptions,
    ReplicationServer,
    ServerOptions,
    WebSocketMaster,
    replicate_websocket,
    start_replication_server,
)
from p2pdb.replication import RESYNC, ReplicationOptions, ReplicationState, replicate

FAST = ClientOptions(reconnect_delay=0.05, max_reconnect_delay=0.2, request_timeout=5.0)


def todo(doc_id: str, text: str, n: int = 0) -> dict[str, object]:
    return {"id": doc_id, "text": text, "done": False, "n": n}


def master_of(state: ReplicationState) -> WebSocketMaster:
    handler = state.handler
    assert isinstance(handler, WebSocketMaster)
    return handler


async def wait_for_clients(server: ReplicationServer, count: int) -> None:
    """Wait until the server has ``count`` connected clients."""
    reached = asyncio.Event()
    subscription = server.client_count.subscribe(
        on_next=lambda n: reached.set() if n == count else None
    )
    try:
        async with asyncio.timeout(WAIT):
            await reached.wait()
    finally:
        subscription.dispose()


async def test_both_ways_insert_update_delete(
    server: ReplicationServer, server_db: p2pdb.Database, client_db: p2pdb.Database
) -> None:
    on_server, on_client = server_db.collections["todos"], client_db.collections["todos"]
    await on_server.insert(todo("s1", "written on the server"))
    await on_client.insert(todo("c1", "written on the client"))
    state = await replicate_websocket(on_client, server.url, options=FAST)
    try:
        await wait_equal(on_server, on_client, seconds=WAIT)
        assert set(await contents(on_server)) == {"s1", "c1"}

        # live, both ways: updates and deletes
        doc = await on_server.find_one("c1")
        assert doc is not None
        await doc.patch({"text": "edited on the server", "n": 5})
        await (await on_client.insert(todo("c2", "later"))).remove()
        s1 = await on_client.find_one("s1")
        assert s1 is not None
        await s1.remove()
        await on_client.insert(todo("c3", "live insert"))
        await wait_equal(on_server, on_client, seconds=WAIT)
        final = await contents(on_server)
        assert set(final) == {"c1", "c3"}
        assert final["c1"]["text"] == "edited on the server"
        assert final["c1"]["n"] == 5
    finally:
        await state.cancel()


async def test_several_collections_over_one_server(
    tmp_path: Path, server_db: p2pdb.Database, client_db: p2pdb.Database
) -> None:
    await server_db.add_collection("notes", PEER_SCHEMA)
    notes = await client_db.add_collection("notes", PEER_SCHEMA)
    todos = client_db.collections["todos"]
    async with await start_replication_server(server_db, port=0) as server:
        await notes.insert({"id": "n1", "text": "a note"})
        await todos.insert(todo("t1", "a todo"))
        states = [
            await replicate_websocket(todos, server.url, options=FAST),
            await replicate_websocket(notes, server.url, options=FAST),
        ]
        try:
            await server_db.collections["notes"].insert({"id": "n2", "text": "server note"})
            await wait_equal(server_db.collections["notes"], notes, seconds=WAIT)
            await wait_equal(server_db.collections["todos"], todos, seconds=WAIT)
            assert set(await contents(notes)) == {"n1", "n2"}
            assert set(await contents(server_db.collections["todos"])) == {"t1"}
            # one more client database on the same server sees both collections' documents
            async with p2pdb.create_database(str(tmp_path / "third.db")) as third:
                third_notes = await third.add_collection("notes", PEER_SCHEMA)
                async with await replicate_websocket(third_notes, server.url, options=FAST):
                    await wait_equal(third_notes, notes, seconds=WAIT)
            await wait_for_clients(server, 2)
        finally:
            for state in states:
                await state.cancel()


async def test_a_restarted_client_resumes_from_its_checkpoints(
    tmp_path: Path, server: ReplicationServer, server_db: p2pdb.Database
) -> None:
    on_server = server_db.collections["todos"]
    await on_server.bulk_insert([todo(f"d{i}", "before") for i in range(30)])
    path = str(tmp_path / "resuming.db")
    async with p2pdb.create_database(path) as db:
        todos = await db.add_collection("todos", TODO_SCHEMA)
        state = await replicate_websocket(todos, server.url, options=FAST)
        count = 0

        def seen(_doc: object) -> None:
            nonlocal count
            count += 1

        state.received.subscribe(on_next=seen)
        await wait_equal(on_server, todos, seconds=WAIT)
        await state.cancel()
        assert count == 30
    await on_server.insert(todo("new", "while the client was away"))
    async with p2pdb.create_database(path) as db:
        todos = await db.add_collection("todos", TODO_SCHEMA)
        pulled: list[str] = []
        state = await replicate_websocket(todos, server.url, options=FAST)
        state.received.subscribe(on_next=lambda doc: pulled.append(doc["id"]))
        async with state:
            await wait_equal(on_server, todos, seconds=WAIT)
            await state.wait_for_in_sync()
        assert pulled == ["new"], "the restarted client must not pull everything again"


async def test_reconnects_after_the_server_restarts(
    server_db: p2pdb.Database, client_db: p2pdb.Database
) -> None:
    on_server, on_client = server_db.collections["todos"], client_db.collections["todos"]
    server = await start_replication_server(server_db, port=0)
    port = server.port
    state = await replicate_websocket(on_client, server.url, options=FAST)
    master = master_of(state)
    resyncs: list[object] = []
    master.stream().subscribe(on_next=lambda item: resyncs.append(item) if item == RESYNC else None)
    errors = Errors(state.errors)
    try:
        await on_client.insert(todo("a", "first"))
        await wait_equal(on_server, on_client, seconds=WAIT)
        assert master.connections == 1

        await server.close()
        await errors.wait("WEBSOCKET_DISCONNECTED")
        assert not master.connected.is_set()
        with pytest.raises(PeerError) as failed:  # fails fast while disconnected
            await master.changes_since(None, 10)
        assert failed.value.code == "WEBSOCKET_DISCONNECTED"
        # written on both sides while apart
        await on_client.insert(todo("b", "written while the server was down"))
        await on_server.insert(todo("c", "written while the client was away"))

        server = await start_replication_server(server_db, port=port)
        async with asyncio.timeout(WAIT):
            await master.connected.wait()
        await wait_equal(on_server, on_client, seconds=WAIT)
        assert set(await contents(on_client)) == {"a", "b", "c"}
        assert master.connections == 2
        assert resyncs, "a reconnect must emit RESYNC on the handler's stream"
    finally:
        await state.cancel()
        await server.close()


async def test_cancel_closes_the_socket(
    server: ReplicationServer, client_db: p2pdb.Database
) -> None:
    state = await replicate_websocket(client_db.collections["todos"], server.url, options=FAST)
    await state.wait_for_in_sync()
    master = master_of(state)
    await wait_for_clients(server, 1)
    await state.cancel()
    await master.close()  # returns once the connection task ended
    assert master.closed
    assert not master.connected.is_set()
    left = [t for t in asyncio.all_tasks() if "WebSocketMaster" in repr(t.get_coro())]
    assert left == [], "no task of the client may outlive cancel()"
    await wait_for_clients(server, 0)


async def test_unreachable_server_fails_fast_and_keeps_retrying(
    client_db: p2pdb.Database,
) -> None:
    async with await start_replication_server(client_db, port=0) as probe:
        port = probe.port  # a port that was free a moment ago, and is closed now
    state = await replicate_websocket(
        client_db.collections["todos"], f"ws://127.0.0.1:{port}", options=FAST
    )
    errors = Errors(state.errors)
    async with state:
        error = await errors.wait("WEBSOCKET_DISCONNECTED")
        assert "Could not connect" in error.message
        assert master_of(state).last_error is not None


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError) as bad:
        ServerOptions(max_requests_in_flight=0)
    assert bad.value.code == "WEBSOCKET_OPTION_INVALID"
    with pytest.raises(ValidationError):
        ClientOptions(reconnect_delay=5.0, max_reconnect_delay=1.0)


async def test_bad_url(client_db: p2pdb.Database) -> None:
    with pytest.raises(ValidationError) as bad:
        await replicate_websocket(client_db.collections["todos"], "http://127.0.0.1:1")
    assert bad.value.code == "WEBSOCKET_URL_INVALID"


async def test_replication_options_pass_through(
    server: ReplicationServer, server_db: p2pdb.Database, client_db: p2pdb.Database
) -> None:
    """``ClientOptions.replication`` configures the replication: here pull only, small batches."""
    on_server, on_client = server_db.collections["todos"], client_db.collections["todos"]
    await on_server.bulk_insert([todo(f"s{i}", "server") for i in range(7)])
    await on_client.insert(todo("local", "stays local"))
    options = ClientOptions(replication=ReplicationOptions(push=False, batch_size=3))
    async with await replicate_websocket(on_client, server.url, options=options) as state:
        assert state.options.batch_size == 3
        await state.wait_for_in_sync()
        assert set(await contents(on_client)) == {"local", *(f"s{i}" for i in range(7))}
        assert await on_server.find_one("local") is None


async def test_the_handler_on_its_own(
    server: ReplicationServer, server_db: p2pdb.Database, client_db: p2pdb.Database
) -> None:
    """docs/websocket.md: ``WebSocketMaster`` as the handler of a ``replicate()``."""
    await server_db.collections["todos"].insert(todo("a", "served"))
    todos = client_db.collections["todos"]
    async with WebSocketMaster(server.url, "todos", client_db.token) as master:
        assert master.connected.is_set(), "start() returns after the first attempt"
        async with replicate(todos, master, "my-replication-id") as state:
            await state.wait_for_in_sync()
    assert master.closed
    assert set(await contents(todos)) == {"a"}
