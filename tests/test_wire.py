"""The transport-agnostic replication wire (p2pdb.replication.rpc / wire / testing) over
the in-memory pipe: requests, timeouts, errors, stream events, hostile params."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import wait_equal
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.errors import PeerError, ValidationError
from p2pdb.replication import RESYNC, ChangesBatch, WriteRow, collection_handler, replicate
from p2pdb.replication.rpc import STREAM_ID, Request, RpcChannel, StreamEvent, WireErrorCodes
from p2pdb.replication.testing import PipeEnd, WirePipe, pipe_pair
from p2pdb.replication.wire import (
    MAX_BATCH,
    answer_request,
    parse_changes,
    parse_stream_event,
    parse_write_rows,
    serve_request,
)

Factory = Callable[[str], Any]


@pytest.fixture
async def make_collection(tmp_path: Path) -> AsyncIterator[Factory]:
    dbs: list[p2pdb.Database] = []

    async def make(name: str) -> p2pdb.Collection:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        dbs.append(db)
        return await db.add_collection("todos", schema=TODO_SCHEMA)

    yield make
    for db in dbs:
        await db.close()


class Echo:
    """A far end that answers requests with a function of them (or not at all)."""

    def __init__(self, end: PipeEnd, answer: Callable[[Request, RpcChannel], None]) -> None:
        self.end = end
        self.channel = RpcChannel(end, label="Echo", token="echo")
        self.requests: list[Request] = []
        self.got_request = asyncio.Event()
        self._answer = answer
        end.receiver = self.on_message

    def on_message(self, message: object) -> None:
        incoming = self.channel.receive(message)
        if isinstance(incoming, Request):
            self.requests.append(incoming)
            self.got_request.set()
            self._answer(incoming, self.channel)


def pair(
    answer: Callable[[Request, RpcChannel], None], **options: Any
) -> tuple[RpcChannel, Echo, list[object]]:
    near, far = pipe_pair()
    received: list[object] = []

    def on_near(message: object) -> None:
        received.append(message)
        channel.receive(message)

    channel = RpcChannel(near, label="Peer far", token="near", **options)
    near.receiver = on_near
    return channel, Echo(far, answer), received


async def test_request_gets_its_answer() -> None:
    channel, echo, _ = pair(lambda r, ch: ch.answer(r.id, {"echo": r.params}))
    async with channel, echo.channel:
        assert await channel.request("ping", [1, "two"]) == {"echo": [1, "two"]}
        assert [(r.method, r.params) for r in echo.requests] == [("ping", [1, "two"])]
        assert echo.requests[0].id.startswith("near|")


async def test_unanswered_request_times_out_with_the_channel_codes() -> None:
    codes = WireErrorCodes("X_TIMEOUT", "X_GONE", "X_REMOTE", "X_BAD", "X_VIOLATION", "X_DATA")
    channel, echo, _ = pair(lambda r, ch: None, codes=codes, context={"peer_id": "far"})
    async with channel, echo.channel:
        with pytest.raises(PeerError) as caught:
            await channel.request("ping", [], within=0.2)
    assert caught.value.code == "X_TIMEOUT"
    assert caught.value.parameters == {"peer_id": "far", "method": "ping"}
    assert "Peer far did not answer ping" in caught.value.message


async def test_error_answer_raises_remote_error() -> None:
    def fail(request: Request, ch: RpcChannel) -> None:
        ch.answer_error(request.id, ValidationError("nope", code="SOME_CODE"))

    channel, echo, _ = pair(fail)
    async with channel, echo.channel:
        with pytest.raises(PeerError) as caught:
            await channel.request("ping", [])
    assert caught.value.code == "WIRE_REMOTE_ERROR"
    assert caught.value.parameters["remote_error"] == {
        "name": "ValidationError",
        "code": "SOME_CODE",
        "message": "nope",
    }


async def test_close_fails_pending_requests_and_later_ones() -> None:
    channel, echo, _ = pair(lambda r, ch: None)
    async with echo.channel:
        await channel.start()
        pending = asyncio.ensure_future(channel.request("ping", []))
        async with asyncio.timeout(5):
            await echo.got_request.wait()
        await channel.close()
        with pytest.raises(PeerError, match="disconnected") as caught:
            await pending
        assert caught.value.code == "WIRE_PEER_GONE"
        with pytest.raises(PeerError) as again:
            await channel.request("ping", [])
        assert again.value.code == "WIRE_PEER_GONE" and channel.closed


async def test_other_end_gone_fails_pending_requests_at_once() -> None:
    channel, echo, _ = pair(lambda r, ch: None)
    async with channel, echo.channel:
        echo.channel.sink.close()  # type: ignore[attr-defined]
        with pytest.raises(PeerError) as caught:
            async with asyncio.timeout(2):  # well under the 20 s request timeout
                await channel.request("ping", [])
    assert caught.value.code == "WIRE_PEER_GONE"


async def test_messages_arrive_in_order_and_on_idle_fires() -> None:
    drained = asyncio.Event()
    channel, echo, _ = pair(lambda r, ch: None, on_idle=drained.set)
    seen: list[dict[str, Any]] = []
    all_seen = asyncio.Event()

    def record(message: object) -> None:
        assert isinstance(message, dict)
        seen.append(message)
        if len(seen) == 50:
            all_seen.set()

    echo.end.receiver = record
    async with channel, echo.channel:
        for i in range(50):
            channel.post_event({"documents": [], "checkpoint": {"seq": i}})
        async with asyncio.timeout(5):
            await drained.wait()
            await all_seen.wait()
    assert [m["result"]["checkpoint"]["seq"] for m in seen] == list(range(50))
    assert all(m["id"] == STREAM_ID for m in seen)
    assert channel.idle.is_set()


class GatedSink:
    """A sink whose sends wait for ``gate`` (a full channel) and can be made to fail."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.sent: list[object] = []
        self.fail = False

    async def send(self, message: object) -> None:
        await self.gate.wait()
        if self.fail:
            raise PeerError("gone", code="WIRE_PEER_GONE")
        self.sent.append(message)


async def test_a_message_posted_while_idle_goes_out_in_the_call_and_order_holds() -> None:
    sink = GatedSink()
    sink.gate.set()
    async with RpcChannel(sink, label="Peer", token="t") as channel:
        channel.post({"n": 0})
        assert sink.sent == [{"n": 0}] and channel.idle.is_set()  # no task hop
        sink.gate.clear()
        for n in range(1, 4):  # the first waits in the sink, the others behind it
            channel.post({"n": n})
        assert not channel.idle.is_set()
        sink.gate.set()
        async with asyncio.timeout(5):
            await channel.idle.wait()
        assert sink.sent == [{"n": n} for n in range(4)]


async def test_a_failed_send_fails_the_requests_and_stops_sending_in_order() -> None:
    sink = GatedSink()
    async with RpcChannel(sink, label="Peer", token="t") as channel:
        answer = asyncio.ensure_future(channel.request("m", [], within=5))
        await asyncio.sleep(0)  # the request task runs: the request waits in the sink
        channel.post({"n": 1})
        assert channel.queued_bytes > 0
        sink.fail = True
        sink.gate.set()
        with pytest.raises(PeerError):
            await asyncio.wait_for(answer, 5)
        channel.post({"n": 2})
    assert sink.sent == [] and channel.queued_bytes == 0  # what was never sent is given back


async def test_nothing_is_sent_before_start() -> None:
    channel, echo, _ = pair(lambda r, ch: None)
    channel.post_event(RESYNC)
    await asyncio.sleep(0.05)
    assert channel.sink.sent == []  # type: ignore[attr-defined]
    async with channel, echo.channel:
        async with asyncio.timeout(5):
            await channel.idle.wait()
    assert channel.sink.sent == [{"id": STREAM_ID, "result": "RESYNC"}]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ([1, 2], "must be a JSON object"),
        ({"result": 1}, "without id or method"),
        ({"id": "near|x|0", "result": 1}, "never made"),
        ({"id": 5, "method": "m", "params": []}, "string id and a params list"),
        ({"id": "a", "method": "m", "params": {}}, "string id and a params list"),
    ],
)
async def test_receive_rejects_hostile_messages(message: object, text: str) -> None:
    channel = RpcChannel(PipeEnd(), label="Peer x", token="near")
    with pytest.raises(PeerError, match=text) as caught:
        channel.receive(message)
    assert caught.value.code == "WIRE_PROTOCOL_VIOLATION"


async def test_receive_returns_requests_and_stream_events() -> None:
    channel = RpcChannel(PipeEnd(), label="Peer x", token="near")
    assert channel.receive({"id": "r1", "method": "m", "params": [1]}) == Request("r1", "m", [1])
    assert channel.receive({"id": STREAM_ID, "result": "RESYNC"}) == StreamEvent("RESYNC")


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("masterChangesSince", [None]),
        ("masterChangesSince", [None, 0]),
        ("masterChangesSince", [None, MAX_BATCH + 1]),
        ("masterChangesSince", [None, True]),
        ("masterChangesSince", [None, 1.5]),
        ("masterChangesSince", "x"),
        ("masterWrite", []),
        ("masterWrite", [{}]),
        ("masterWrite", [[{"newDocumentState": "x"}]]),
        ("masterWrite", [[{"newDocumentState": {}, "assumedMasterState": 3}]]),
        ("masterWrite", [[{"newDocumentState": {"id": "a"}}] * (MAX_BATCH + 1)]),
        ("dropDatabase", []),
    ],
)
async def test_serve_request_rejects_hostile_params(
    make_collection: Factory, method: str, params: object
) -> None:
    master = await make_collection("master")
    with pytest.raises(PeerError) as caught:
        await serve_request(collection_handler(master), method, params)
    assert caught.value.code == "WIRE_PROTOCOL_VIOLATION"
    assert await master.count() == 0


async def test_answer_request_reports_invalid_documents(make_collection: Factory) -> None:
    master = await make_collection("master")
    near, far = pipe_pair()
    arrived: list[object] = []
    answered = asyncio.Event()

    def record(message: object) -> None:
        arrived.append(message)
        answered.set()

    far.receiver = record
    request = Request("r", "masterWrite", [[{"newDocumentState": {"id": "a", "text": 5}}]])
    async with RpcChannel(near, label="Peer x", token="m", context={"peer_id": "x"}) as channel:
        with pytest.raises(PeerError) as caught:
            await answer_request(channel, collection_handler(master), request)
        async with asyncio.timeout(5):
            await answered.wait()
    assert caught.value.code == "WIRE_INVALID_DATA"
    assert caught.value.parameters["peer_id"] == "x"
    (answer,) = arrived
    assert isinstance(answer, dict) and answer["id"] == "r" and answer["result"] is None
    assert answer["error"]["name"] == "ValidationError"
    assert await master.count() == 0


def test_parsers_reject_bad_shapes() -> None:
    with pytest.raises(PeerError) as bad:
        parse_changes({"documents": "x"})
    assert bad.value.code == "WIRE_BAD_ANSWER"
    with pytest.raises(PeerError) as violation:
        parse_stream_event({"checkpoint": 1})
    assert violation.value.code == "WIRE_PROTOCOL_VIOLATION"
    assert parse_stream_event("RESYNC") == RESYNC
    assert parse_stream_event({"documents": [], "checkpoint": 3}) == ChangesBatch([], 3)
    rows = parse_write_rows([[{"newDocumentState": {"id": "a"}, "assumedMasterState": None}]])
    assert rows[0].new_document_state == {"id": "a"} and rows[0].assumed_master_state is None


async def test_replication_over_the_pipe(make_collection: Factory) -> None:
    master, fork = await make_collection("master"), await make_collection("fork")
    await master.bulk_insert([{"id": f"m{i}", "text": str(i)} for i in range(120)])
    await fork.bulk_insert([{"id": f"f{i}", "text": str(i)} for i in range(30)])
    async with WirePipe(collection_handler(master, origin="pipe")) as pipe:
        async with replicate(fork, pipe.handler, "pipe", batch_size=25) as state:
            await state.wait_for_initial_replication()
            assert await fork.count() == 150
            await master.insert({"id": "live", "text": "through a stream event"})
            await fork.insert({"id": "pushed", "text": "through masterWrite"})
            await wait_equal(master, fork)
            await state.wait_for_in_sync()
        sent = pipe.master_end.sent
        events = [m for m in sent if isinstance(m, dict) and m.get("id") == STREAM_ID]
        assert any(m["result"] != RESYNC for m in events)
        assert pipe.errors == []
    assert await master.count() == 152


async def test_conflicts_travel_back_over_the_pipe(make_collection: Factory) -> None:
    master = await make_collection("master")
    await master.insert({"id": "a", "text": "master's"})
    async with WirePipe(collection_handler(master)) as pipe:
        conflicts = await pipe.handler.write(
            [WriteRow({"id": "a", "text": "fork's", "_deleted": False})]
        )
    assert [c["text"] for c in conflicts] == ["master's"]
    stored = await master.find_one("a")
    assert stored is not None and stored.to_dict()["text"] == "master's"


def test_wire_loads_no_network_library() -> None:
    code = (
        "import sys, p2pdb.replication.wire, p2pdb.replication.rpc, p2pdb.replication.testing;"
        "bad = {'aiortc', 'av', 'websockets'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_pipe_reports_hostile_traffic_and_answers_unknown_methods(
    make_collection: Factory,
) -> None:
    master = await make_collection("master")
    async with WirePipe(collection_handler(master), request_timeout=2.0) as pipe:
        with pytest.raises(PeerError) as caught:
            await pipe.fork_channel.request("dropDatabase", [])
        assert caught.value.code == "WIRE_REMOTE_ERROR"
        assert caught.value.parameters["remote_error"]["code"] == "WIRE_PROTOCOL_VIOLATION"
        # the start's RESYNC arrived before the answer above (one ordered queue)
        received = asyncio.Event()
        pipe.master_channel.post_event({"checkpoint": 1})  # neither RESYNC nor a batch
        pipe.master_channel.post_event(RESYNC)  # a marker: handled after the bad event
        pipe.handler.stream().subscribe(on_next=lambda _item: received.set())
        async with asyncio.timeout(5):
            await received.wait()
    codes = [getattr(error, "code", None) for error in pipe.errors]
    assert codes == ["WIRE_PROTOCOL_VIOLATION", "WIRE_PROTOCOL_VIOLATION"]
    assert "Unknown method" in str(pipe.errors[0]) and "stream event" in str(pipe.errors[1])


class EventRightAfterTheAnswer:
    """A master that, once armed, follows its next pull answer at once, on the same ordered
    channel, with a stream event carrying a document written after that pull's read (later
    pulls return it too, as a real master would)."""

    def __init__(self, inner: Any, late: dict[str, Any]) -> None:
        from reactivex import merge
        from reactivex.subject import Subject

        self.inner = inner
        self.late = {**late, "_deleted": False}
        self.extra: Subject[Any] = Subject()
        self._stream = merge(inner.stream(), self.extra)
        self.armed = False
        self.written = False

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        batch: ChangesBatch = await self.inner.changes_since(checkpoint, batch_size)
        if self.written and checkpoint["seq"] < 10**6:
            return ChangesBatch([*batch.documents, self.late], {"seq": 10**6})
        if self.armed:  # posted right after this answer: both reach the fork in one burst
            self.armed, self.written = False, True
            event = ChangesBatch([self.late], {"seq": 10**6})
            asyncio.get_running_loop().call_soon(self.extra.on_next, event)
        return batch

    async def write(self, rows: Any) -> Any:
        return await self.inner.write(rows)

    def stream(self) -> Any:
        return self._stream


async def test_an_event_arriving_right_after_a_pull_answer_is_applied(
    make_collection: Factory,
) -> None:
    # The stale-state rule drops stream events that arrived before a pull's answer (the pull
    # covers them). An event that arrived *after* the answer, but before the fork's task
    # resumed with it, must not be numbered before the answer: it holds a write the pull
    # never saw, and dropping it would leave that write behind (and a later event would
    # move the checkpoint past it for good).
    master, fork = await make_collection("master"), await make_collection("fork")
    await master.insert({"id": "a", "text": "pulled"})
    handler = EventRightAfterTheAnswer(collection_handler(master), {"id": "late", "text": "b"})
    async with WirePipe(handler) as pipe:
        stored = asyncio.Event()
        fork.changes.subscribe(lambda event: stored.set() if event.id == "late" else None)
        async with replicate(fork, pipe.handler, "burst", push=False) as state:
            await state.wait_for_in_sync()
            handler.armed = True
            await state.re_sync()  # one pull, answered, then the event right behind it
            async with asyncio.timeout(5):
                await stored.wait()
    assert sorted(doc.id for doc in await fork.find()) == ["a", "late"]
