"""Hostile clients against a real replication server.

A raw websocket client sends what it likes. What the server promises and these tests check:
every bad message gets an error answer or a disconnect, each with a typed error on
``server.errors``; the server keeps serving an honest client meanwhile; the stored data
never changes because of a rejected message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from replication_helpers import contents, wait_equal
from schemas import TODO_SCHEMA
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from ws_helpers import WAIT, Errors, RawClient

import p2pdb
from p2pdb.plugins.replication_websocket import (
    ClientOptions,
    ReplicationServer,
    ServerOptions,
    replicate_websocket,
    start_replication_server,
)
from p2pdb.replication import ReplicationState

Doc = dict[str, Any]
GOOD_ROW = {"newDocumentState": {"id": "evil", "text": "x", "_deleted": False}}


@pytest.fixture
async def honest(
    server: ReplicationServer, server_db: p2pdb.Database, client_db: p2pdb.Database
) -> AsyncIterator[ReplicationState]:
    """An honest p2pdb client, replicating with the server during the whole test."""
    await server_db.collections["todos"].insert({"id": "kept", "text": "stored before"})
    state = await replicate_websocket(
        client_db.collections["todos"],
        server.url,
        options=ClientOptions(reconnect_delay=0.05, max_reconnect_delay=0.2),
    )
    await state.wait_for_in_sync()
    yield state
    await state.cancel()


async def still_serving(
    server_db: p2pdb.Database, client_db: p2pdb.Database, before: dict[str, Doc], mark: str
) -> None:
    """The rejected messages changed nothing, and the honest client still replicates."""
    on_server = server_db.collections["todos"]
    assert await contents(on_server) == before
    await client_db.collections["todos"].insert({"id": mark, "text": "honest, afterwards"})
    await wait_equal(on_server, client_db.collections["todos"], seconds=WAIT)
    assert set(await contents(on_server)) == {*before, mark}


DISCONNECTING: list[Any] = [
    pytest.param("not json at all {", "WEBSOCKET_PROTOCOL_VIOLATION", id="malformed-json"),
    pytest.param(b"\xff\xfe binary", "WEBSOCKET_PROTOCOL_VIOLATION", id="binary-garbage"),
    pytest.param([1, 2, 3], "WEBSOCKET_PROTOCOL_VIOLATION", id="not-an-object"),
    pytest.param(
        {"id": "r", "method": "masterChangesSince", "params": [None, 5]},
        "WEBSOCKET_PROTOCOL_VIOLATION",
        id="no-collection",
    ),
    pytest.param(
        {"id": "stream", "collection": "todos", "result": "RESYNC"},
        "WEBSOCKET_PROTOCOL_VIOLATION",
        id="stream-event-from-a-client",
    ),
    pytest.param(
        {"id": "never|asked|0", "collection": "todos", "result": []},
        "WEBSOCKET_PROTOCOL_VIOLATION",
        id="answer-to-nothing",
    ),
    pytest.param(
        {"id": 7, "collection": "todos", "method": "masterWrite", "params": []},
        "WEBSOCKET_PROTOCOL_VIOLATION",
        id="id-not-a-string",
    ),
]


@pytest.mark.parametrize(("frame", "code"), DISCONNECTING)
async def test_broken_messages_disconnect(
    frame: object,
    code: str,
    honest: ReplicationState,
    server: ReplicationServer,
    server_db: p2pdb.Database,
    client_db: p2pdb.Database,
) -> None:
    errors = Errors(server.errors)
    before = await contents(server_db.collections["todos"])
    raw = await RawClient.connect(server.url)
    if isinstance(frame, str | bytes):
        await raw.socket.send(frame)
    else:
        await raw.send(frame)
    assert await raw.closed_with() == CloseCode.POLICY_VIOLATION
    error = await errors.wait(code)
    assert "client" in error.parameters
    await still_serving(server_db, client_db, before, "after-" + code.lower())


V, INVALID = "WEBSOCKET_PROTOCOL_VIOLATION", "WEBSOCKET_INVALID_DATA"
BAD_REQUESTS: list[Any] = [
    # method, params, the error code in the answer, the one reported on server.errors
    pytest.param("masterChangesSince", [None, -1], V, V, id="batch-size"),
    pytest.param("masterChangesSince", [None], V, V, id="pull-arity"),
    pytest.param(
        "masterChangesSince", [{"seq": "x"}, 10], "REPLICATION_BAD_CHECKPOINT", INVALID, id="cp"
    ),
    pytest.param("masterWrite", [["row"]], V, V, id="rows"),
    pytest.param(
        "masterWrite",
        [[{"newDocumentState": {"id": "evil", "text": 5, "_deleted": False}}]],
        "REPLICATION_PUSH_INVALID",
        INVALID,
        id="schema",
    ),
    pytest.param("masterWrite", {"rows": []}, None, V, id="params-object"),
]


@pytest.mark.parametrize(("method", "params", "answered", "code"), BAD_REQUESTS)
async def test_bad_params_get_an_error_answer_then_a_disconnect(
    method: str,
    params: object,
    answered: str | None,
    code: str,
    honest: ReplicationState,
    server: ReplicationServer,
    server_db: p2pdb.Database,
    client_db: p2pdb.Database,
) -> None:
    errors = Errors(server.errors)
    before = await contents(server_db.collections["todos"])
    raw = await RawClient.connect(server.url)
    if answered is not None:
        answer = await raw.request(method, params)
        assert answer["error"]["code"] == answered
        if method == "masterChangesSince":  # what RxDB's client can take instead of null
            assert answer["result"] == {"documents": [], "checkpoint": None}
        assert answer["collection"] == "todos"
    else:  # params that are not a list: the request is malformed, no answer
        await raw.send({"id": "r1", "collection": "todos", "method": method, "params": params})
    assert await raw.closed_with() == CloseCode.POLICY_VIOLATION
    await errors.wait(code)
    await still_serving(server_db, client_db, before, "after-" + code.lower())


async def test_unknown_method_is_answered_and_the_connection_stays(
    honest: ReplicationState, server: ReplicationServer, server_db: p2pdb.Database
) -> None:
    errors = Errors(server.errors)
    raw = await RawClient.connect(server.url)
    answer = await raw.request("dropDatabase", [], request_id="x1")
    assert answer["result"] is None
    assert answer["error"]["code"] == "WEBSOCKET_PROTOCOL_VIOLATION"
    assert "dropDatabase" in answer["error"]["message"]
    await errors.wait("WEBSOCKET_PROTOCOL_VIOLATION")
    # still connected and served
    served = await raw.request("masterChangesSince", [None, 10], request_id="x2")
    assert [d["id"] for d in served["result"]["documents"]] == ["kept"]
    assert await contents(server_db.collections["todos"]) == {
        "kept": {"id": "kept", "text": "stored before"}
    }
    await raw.close()


@pytest.mark.parametrize("method", ["masterWrite", "masterChangesSince", "masterChangeStream$"])
async def test_unknown_collection(
    method: str,
    honest: ReplicationState,
    server: ReplicationServer,
    server_db: p2pdb.Database,
    client_db: p2pdb.Database,
) -> None:
    errors = Errors(server.errors)
    before = await contents(server_db.collections["todos"])
    raw = await RawClient.connect(server.url)
    params: list[Any] = {"masterWrite": [[GOOD_ROW]], "masterChangesSince": [None, 10]}.get(
        method, []
    )
    if method == "masterChangeStream$":  # not answered (its id is "stream"): disconnected
        await raw.send({"id": "stream", "collection": "nope", "method": method, "params": []})
    else:
        answer = await raw.request(method, params, collection="nope", request_id="r")
        assert answer["error"]["code"] == "WEBSOCKET_UNKNOWN_COLLECTION"
        assert answer["collection"] == "nope"
        if method == "masterChangesSince":  # an empty batch with the error: RxDB takes it
            assert answer["result"] == {"documents": [], "checkpoint": None}
        else:
            assert answer["result"] is None
    assert await raw.closed_with() == CloseCode.POLICY_VIOLATION
    error = await errors.wait("WEBSOCKET_UNKNOWN_COLLECTION")
    assert error.parameters["collection"] == "nope"
    await still_serving(server_db, client_db, before, "after-unknown-collection")


async def test_oversized_frame_disconnects(
    server_db: p2pdb.Database, client_db: p2pdb.Database
) -> None:
    options = ServerOptions(max_message_size=4096)
    async with await start_replication_server(server_db, port=0, options=options) as server:
        errors = Errors(server.errors)
        raw = await RawClient.connect(server.url)
        big = {"newDocumentState": {"id": "big", "text": "x" * 10_000, "_deleted": False}}
        await raw.send(
            {"id": "r", "collection": "todos", "method": "masterWrite", "params": [[big]]}
        )
        assert await raw.closed_with() == CloseCode.MESSAGE_TOO_BIG
        await errors.wait("WEBSOCKET_MESSAGE_TOO_BIG")
        assert await server_db.collections["todos"].find_one("big") is None
        # a normal client of the same server is fine
        on_client = client_db.collections["todos"]
        await on_client.insert({"id": "small", "text": "fits"})
        async with await replicate_websocket(on_client, server.url) as state:
            await state.wait_for_in_sync()
        assert await server_db.collections["todos"].find_one("small") is not None


async def test_too_many_connections(server_db: p2pdb.Database) -> None:
    options = ServerOptions(max_connections=1)
    async with await start_replication_server(server_db, port=0, options=options) as server:
        errors = Errors(server.errors)
        first = await RawClient.connect(server.url)
        served = await first.request("masterChangesSince", [None, 10])
        assert served["result"]["documents"] == []
        second = await RawClient.connect(server.url)
        assert await second.closed_with() == CloseCode.TRY_AGAIN_LATER
        await errors.wait("WEBSOCKET_TOO_MANY_CONNECTIONS")
        assert (await first.request("masterChangesSince", [None, 10], request_id="again"))[
            "result"
        ]["documents"] == []
        await first.close()


async def check_token(headers: Any) -> bool:
    return bool(headers.get("authorization") == "Bearer good")


async def test_authentication(tmp_path: Any, server_db: p2pdb.Database) -> None:
    options = ServerOptions(authenticate=check_token)
    async with await start_replication_server(server_db, port=0, options=options) as server:
        errors = Errors(server.errors)
        # no auth message: the first request is refused, then the client is dropped
        raw = await RawClient.connect(server.url)
        answer = await raw.request("masterWrite", [[GOOD_ROW]])
        assert answer["error"]["code"] == "WEBSOCKET_UNAUTHORIZED"
        assert await raw.closed_with() == CloseCode.POLICY_VIOLATION
        await errors.wait("WEBSOCKET_UNAUTHORIZED")
        # a subscription before the headers: dropped, and no answer (its id is "stream")
        raw = await RawClient.connect(server.url)
        await raw.send(
            {"id": "stream", "collection": "todos", "method": "masterChangeStream$", "params": []}
        )
        assert await raw.closed_with() == CloseCode.POLICY_VIOLATION
        with pytest.raises(ConnectionClosed):
            await raw.socket.recv()
        # wrong headers: dropped at once
        raw = await RawClient.connect(server.url)
        await raw.send({"id": "a", "collection": "todos", "method": "auth", "params": [{}]})
        assert await raw.closed_with() == CloseCode.POLICY_VIOLATION
        assert await server_db.collections["todos"].find_one("evil") is None
        # the right headers, through the client's option: replicates
        async with p2pdb.create_database(str(tmp_path / "authed.db")) as db:
            todos = await db.add_collection("todos", TODO_SCHEMA)
            await todos.insert({"id": "authed", "text": "with a token"})
            good = ClientOptions(headers={"authorization": "Bearer good"})
            async with await replicate_websocket(todos, server.url, options=good) as state:
                await state.wait_for_in_sync()
        assert await server_db.collections["todos"].find_one("authed") is not None


async def test_a_client_that_does_not_read_costs_bounded_memory(
    server_db: p2pdb.Database,
) -> None:
    """Stream events for a client that stops reading are not queued without bound: past
    ``max_queued_events`` they are dropped, and one RESYNC follows once it reads again."""
    options = ServerOptions(max_queued_events=3)
    on_server = server_db.collections["todos"]
    async with await start_replication_server(server_db, port=0, options=options) as server:
        raw = await RawClient.connect(server.url, max_queue=1, compression=None)
        subscribe = {"id": "stream", "collection": "todos", "method": "masterChangeStream$"}
        await raw.send({**subscribe, "params": []})
        probe = await raw.request("masterChangesSince", [None, 1], request_id="subscribed?")
        assert probe["result"]["documents"] == []
        # ~40 MB of events: far more than the socket buffers hold while nobody reads
        text = "x" * 200_000
        for i in range(200):
            await on_server.insert({"id": f"d{i:03}", "text": text})
        events: list[object] = []
        while "RESYNC" not in events:
            message = await raw.recv()
            assert message["id"] == "stream"
            events.append(
                message["result"]
                if message["result"] == "RESYNC"
                else message["result"]["documents"][0]["id"]
            )
        assert len(events) < 200, "some events must have been dropped"
        assert events[-1] == "RESYNC"
        assert len(server.sessions) == 1, "a slow client is slowed down, not disconnected"
        await raw.close()
