"""PeerLimits, the shared MemoryBudget and the RequestGate (p2pdb.replication.limits and
gate) over the in-memory pipe: fast checks of every bound a transport relies on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.errors import PeerError, ValidationError
from p2pdb.replication import ChangesBatch, replicate
from p2pdb.replication.gate import RequestGate, UnknownMethods
from p2pdb.replication.limits import (
    PROCESS_BUDGET,
    ErrorRate,
    MemoryBudget,
    PeerLimits,
    json_size,
    text_too_deep,
    value_too_deep,
)
from p2pdb.replication.rpc import MAX_URGENT, WIRE_CODES, Request, RpcChannel
from p2pdb.replication.testing import WirePipe, pipe_pair
from p2pdb.replication.wire import check_checkpoint, parse_changes, parse_stream_event
from p2pdb.storage import SMALL_WRITE_ROWS

# -- the options and the pure helpers --------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_requests_in_flight", 0),
        ("max_bulk_writes_in_flight", 0),
        ("max_queued_requests", -1),
        ("max_queued_writes", 0),
        ("max_queued_bytes", 0),
        ("max_outbox_bytes", 1.5),
        ("drain_timeout", 0),
        ("max_depth", True),
        ("max_errors", "20"),
        ("error_window", -1.0),
        ("budget", 1000),
    ],
)
def test_bad_limits_are_refused_with_a_code(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        PeerLimits(**{field: value})
    assert caught.value.code == "WIRE_LIMIT_INVALID"
    assert caught.value.parameters["setting"] == field


def test_defaults_and_the_shared_budget() -> None:
    limits = PeerLimits()
    assert (limits.max_requests_in_flight, limits.max_queued_requests) == (8, 64)
    assert limits.max_bulk_writes_in_flight == 1
    assert (limits.max_queued_writes, limits.max_queued_bytes) == (4096, 32 << 20)
    assert limits.max_outbox_bytes == 8 << 20 and limits.max_depth == 100
    assert limits.shared_budget() is PROCESS_BUDGET
    own = MemoryBudget(1000)
    assert PeerLimits(budget=own).shared_budget() is own
    with pytest.raises(ValidationError):
        MemoryBudget(0)


def test_depth_of_text_and_values() -> None:
    assert text_too_deep("[" * 5000 + "]" * 5000, 100)
    assert not text_too_deep("[" * 100 + "]" * 100, 100)
    assert text_too_deep("[" * 101 + "]" * 101, 100)
    # brackets inside strings (escaped quotes too) nest nothing
    assert not text_too_deep('["' + "[" * 500 + '"]', 10)
    assert not text_too_deep('{"a": "\\"[[[[[[", "b": [1]}', 3)
    assert text_too_deep(b'{"a": "\\\\", "b": [[[[1]]]]}', 4)
    assert not text_too_deep('{"a": "\\ud83d[[[[[["}', 2)  # lone surrogates are fine
    deep: Any = []
    for _ in range(3000):
        deep = [deep]
    assert value_too_deep(deep, 100) and not value_too_deep([[1], {"a": [2]}], 3)
    assert value_too_deep([[[]]], 2) and not value_too_deep([[[]]], 3)
    assert json_size({"a": 1}) == 7 and json_size("\ud800") == 8  # escaped when orjson refuses
    # past the rounds of peeling (more than 8 levels) the running count decides
    nested = "[" * 10 + '{"a": "]]"}' + "]" * 10
    assert not text_too_deep(nested, 11) and text_too_deep(nested, 10)


def _depth_by_scanning(text: bytes) -> int:
    """The nesting depth ``text_too_deep`` judges, by the plain character scan: an escape
    takes the next character with it, quotes open and close strings."""
    depth = deepest = 0
    in_string = False
    i = 0
    while i < len(text):
        char = text[i : i + 1]
        if char == b"\\":
            i += 2
            continue
        if char == b'"':
            in_string = not in_string
        elif not in_string and char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif not in_string and char in (b"]", b"}"):
            depth -= 1
        i += 1
    return deepest


_GARBAGE = b'[]{}"\\ax:,'
_JSON = st.recursive(
    st.none() | st.integers() | st.text(alphabet='ab[]{}"\\', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=40,
)


@given(
    text=st.one_of(
        _JSON.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=60).map(lambda raw: bytes(_GARBAGE[b % len(_GARBAGE)] for b in raw)),
    ),
    max_depth=st.integers(0, 12),
)
def test_text_depth_is_the_plain_scan(text: bytes, max_depth: int) -> None:
    """The fast passes (a skeleton of brackets and quotes, pairs peeled) judge every text,
    JSON or garbage, as the plain character scan does."""
    assert text_too_deep(text, max_depth) == (_depth_by_scanning(text) > max_depth)
    assert text_too_deep(text.decode("latin-1"), max_depth) == text_too_deep(text, max_depth)


def test_error_rate_reports_a_few_then_drops() -> None:
    rate = ErrorRate(PeerLimits(max_errors=4, error_window=10.0, logged_errors=2))
    verdicts = [rate.note(t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert verdicts == ["report", "report", "quiet", "quiet"]
    assert rate.take_suppressed() == 2 and rate.take_suppressed() == 0
    assert rate.note(4.0) == "drop"  # a fifth within the window
    rate = ErrorRate(PeerLimits(max_errors=2, error_window=1.0, logged_errors=1))
    # spread out: never over the limit, one report per window
    assert [rate.note(t * 0.6) for t in range(6)] == ["report", "quiet", "report"] + [
        "quiet",
        "report",
        "quiet",
    ]


def test_checkpoints_over_the_limits_are_refused() -> None:
    assert check_checkpoint({"seq": 5}) == {"seq": 5}
    with pytest.raises(PeerError) as caught:
        check_checkpoint({"pad": "x" * (30 << 20)})
    assert caught.value.code == "WIRE_PEER_OVER_LIMIT"
    assert caught.value.parameters["limit"] == "max_checkpoint_bytes"
    deep: Any = {}
    for _ in range(5000):
        deep = {"a": deep}
    with pytest.raises(PeerError) as caught:
        parse_stream_event({"documents": [], "checkpoint": deep})
    assert caught.value.parameters["limit"] == "max_depth"
    small = PeerLimits(max_checkpoint_bytes=10)
    with pytest.raises(PeerError):
        parse_changes({"documents": [], "checkpoint": {"seq": 123456789}}, WIRE_CODES, small)
    assert parse_changes({"documents": [], "checkpoint": {"seq": 1}}, WIRE_CODES, small) == (
        ChangesBatch([], {"seq": 1})
    )


# -- the channel's outbox and the budget ---------------------------------------------------


class StuckSink:
    """A peer that reads nothing until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent: list[object] = []

    async def send(self, message: object) -> None:
        await self.release.wait()
        self.sent.append(message)


async def test_the_outbox_is_counted_and_charged_to_the_budget() -> None:
    budget = MemoryBudget(1000)
    sink = StuckSink()
    async with RpcChannel(sink, label="Peer", token="t", budget=budget) as channel:
        channel.answer("a", "x" * 600)
        channel.answer("b", "x" * 600)
        size = json_size({"id": "a", "result": "x" * 600})
        assert channel.queued_bytes == 2 * size and budget.used == 2 * size
        assert not budget.has_room()
        sink.release.set()
        await channel.idle.wait()
        assert channel.queued_bytes == 0 and budget.used == 0
        sink.release.clear()
        channel.answer("c", "x" * 600)
        channel.answer("d", "x" * 600)
    assert budget.used == 0  # closing gives back what was never sent


async def test_a_flood_of_urgent_messages_is_queued_past_a_bound() -> None:
    sink = StuckSink()
    async with RpcChannel(sink, label="Peer", token="t") as channel:
        for i in range(100):
            channel.answer(str(i), "token", urgent=True)
        # the ones past MAX_URGENT went to the queue (the others are tasks, waiting)
        assert channel.queued_bytes == json_size({"id": "99", "result": "token"}) * (
            100 - MAX_URGENT
        )
        sink.release.set()
        await channel.idle.wait()
    assert len(sink.sent) == 100 and MAX_URGENT < 100


# -- the gate ------------------------------------------------------------------------------


class Server:
    """A master end whose requests wait on ``go`` and answer ``size`` bytes each."""

    def __init__(self, channel: RpcChannel, limits: PeerLimits, size: int = 1000) -> None:
        self.channel = channel
        self.go = asyncio.Event()
        self.running = 0
        self.most = 0
        self.served = 0
        self.size = size
        self.dropped: list[PeerError] = []
        self.gate = RequestGate(channel, limits, self.serve, self.drop)
        self._changed = asyncio.Event()

    def drop(self, error: PeerError) -> None:
        self.dropped.append(error)
        self._changed.set()

    async def serve(self, request: Request) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.go.wait()
            self.channel.answer(request.id, "x" * self.size)
            self.served += 1
            self._changed.set()
        finally:
            self.running -= 1

    async def until(self, condition: Any, within: float = 5.0) -> None:
        """Wait (on this server's changes) until ``condition()`` holds."""
        async with asyncio.timeout(within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


def requests(count: int) -> list[Request]:
    return [Request(f"r{i}", "masterChangesSince", [None, 10]) for i in range(count)]


async def test_the_gate_bounds_requests_in_flight_and_queued() -> None:
    limits = PeerLimits(max_requests_in_flight=3, max_queued_requests=5)
    end, _other = pipe_pair()
    async with RpcChannel(end, label="Peer x", token="t") as channel:
        server = Server(channel, limits)
        async with server.gate as gate:
            for request in requests(8):
                gate.push(request)
            await asyncio.sleep(0)
            assert (gate.in_flight, gate.waiting, server.running) == (3, 5, 3)
            with pytest.raises(PeerError) as caught:
                gate.push(Request("one-more", "masterChangesSince", [None, 10]))
            assert caught.value.code == "WIRE_PEER_OVER_LIMIT"
            assert caught.value.parameters["limit"] == "max_queued_requests"
            with pytest.raises(PeerError):
                gate.push(Request("after", "masterWrite", [[]]))  # failed: takes nothing
    assert server.most == 3


def bulk_write(name: str, rows: int = SMALL_WRITE_ROWS + 1) -> Request:
    return Request(name, "masterWrite", [[{"new_document_state": {"id": name}}] * rows])


async def test_an_idle_gate_starts_a_write_in_the_turn_it_arrived_a_pull_as_a_task() -> None:
    limits = PeerLimits(max_requests_in_flight=4, max_bulk_writes_in_flight=2)
    end, _other = pipe_pair()
    async with RpcChannel(end, label="Peer x", token="t") as channel:
        server = Server(channel, limits)
        async with server.gate as gate:
            gate.push(bulk_write("b0"))
            assert (server.running, gate.in_flight) == (1, 1)  # began within push()
            gate.push(bulk_write("b1"))  # a bulk write with one in flight: a task
            gate.push(requests(1)[0])  # a pull: always a task
            assert server.running == 1
            gate.push(Request("w0", "masterWrite", [[]]))  # a small write: at once, always
            assert (server.running, gate.in_flight) == (2, 4)  # the two tasks not begun yet
            await asyncio.sleep(0)
            assert (server.running, gate.in_flight) == (4, 4)
            server.go.set()
            await server.until(lambda: server.served == 4)
            assert gate.in_flight == 0  # each ended in the step it answered in
            server.go.clear()
            gate.push(bulk_write("b2"))  # idle again: at once
            assert server.running == 1
            server.go.set()
            await server.until(lambda: server.served == 5)


async def test_bulk_writes_take_turns_and_small_writes_go_ahead_of_them() -> None:
    """At most ``max_bulk_writes_in_flight`` writes of more than SMALL_WRITE_ROWS rows are
    served at once; a small write arriving behind waiting bulk writes starts at once; a
    pull keeps its place behind them (a fork's answer to a RESYNC follows its pushes:
    acks.py); the bulk writes are counted as waiting writes, and a failed gate drops every
    queue."""
    limits = PeerLimits(max_requests_in_flight=4, max_queued_writes=5)
    end, _other = pipe_pair()
    async with RpcChannel(end, label="Peer x", token="t") as channel:
        order: list[str] = []
        server = Server(channel, limits)
        serve = server.serve

        async def serve_in_order(request: Request) -> None:
            order.append(request.id)
            await serve(request)

        server.gate = RequestGate(channel, limits, serve_in_order, server.drop)
        async with server.gate as gate:
            for i in range(4):
                gate.push(bulk_write(f"b{i}"))
            gate.push(requests(1)[0])
            gate.push(bulk_write("s0", SMALL_WRITE_ROWS))  # small: at most 16 rows
            await asyncio.sleep(0)
            assert order == ["b0", "s0"]
            assert (server.running, gate.in_flight, gate.waiting) == (2, 2, 4)
            server.go.set()
            await server.until(lambda: server.served == 6)
            assert order == ["b0", "s0", "b1", "b2", "b3", "r0"]
            assert server.most == 2  # never two bulk writes at once
            server.go.clear()
            for i in range(4, 10):  # 1 starts, 5 wait: the bound, bulk ones counted too
                gate.push(bulk_write(f"b{i}"))
            with pytest.raises(PeerError) as caught:
                gate.push(bulk_write("one-more"))
            assert caught.value.parameters["limit"] == "max_queued_writes"
            assert gate.waiting == 0 and server.running == 1


async def test_the_gate_counts_queued_writes_apart() -> None:
    """Requests served at once are not counted; waiting writes are, by number and by their
    params' JSON size (one past ``max_queued_bytes`` drops the peer), and apart from the
    other requests (``max_queued_requests``)."""
    row = [[{"new_document_state": {"id": "a", "text": "x" * 900}}]]
    size = json_size(row)
    limits = PeerLimits(max_requests_in_flight=2, max_queued_requests=2, max_queued_bytes=3 * size)
    end, _other = pipe_pair()
    async with RpcChannel(end, label="Peer x", token="t") as channel:
        server = Server(channel, limits)
        async with server.gate as gate:
            for i in range(5):  # 2 start, 3 wait: exactly the bound
                gate.push(Request(f"w{i}", "masterWrite", row))
            for request in requests(2):  # reads have a bound of their own
                gate.push(request)
            await asyncio.sleep(0)
            assert (gate.in_flight, gate.waiting) == (2, 5)
            with pytest.raises(PeerError) as caught:
                gate.push(Request("one-more", "masterWrite", row))
            assert caught.value.parameters["limit"] == "max_queued_bytes"
    limits = PeerLimits(max_requests_in_flight=1, max_queued_writes=3)
    async with RpcChannel(end, label="Peer x", token="t") as channel:
        server = Server(channel, limits)
        async with server.gate as gate:
            for i in range(4):  # 1 starts, 3 wait
                gate.push(Request(f"w{i}", "masterWrite", [[]]))
            with pytest.raises(PeerError) as caught:
                gate.push(Request("one-more", "masterWrite", [[]]))
            assert caught.value.parameters["limit"] == "max_queued_writes"


async def test_an_rxdb_push_burst_is_served_whole() -> None:
    """An RxDB fork sends every push batch of one bulk write at once: 500 ``masterWrite``
    requests of 20 rows of ~1 KB (a bulk insert of 10,000 documents) are all served with
    the default limits, one at a time (bulk writes: over 16 rows), and the peer is not
    dropped."""
    rows = [[{"new_document_state": {"id": str(i), "text": "x" * 960}} for i in range(20)]]
    end, _other = pipe_pair()
    async with RpcChannel(end, label="Peer x", token="t") as channel:
        server = Server(channel, PeerLimits(budget=MemoryBudget()), size=10)
        async with server.gate as gate:
            for i in range(500):
                gate.push(Request(f"w{i}", "masterWrite", rows))
            await asyncio.sleep(0)
            assert (gate.in_flight, gate.waiting, server.running) == (1, 499, 1)
            server.go.set()
            await server.until(lambda: server.served == 500, within=30)
    assert server.most == 1 and not server.dropped


async def test_a_slow_reader_is_slowed_then_dropped() -> None:
    """Answers pile up for a peer that reads nothing: no request starts while its outbox is
    over max_outbox_bytes, and after drain_timeout without progress the peer is dropped."""
    limits = PeerLimits(
        max_outbox_bytes=2500, drain_timeout=0.3, max_queued_requests=50, max_requests_in_flight=1
    )
    sink = StuckSink()
    async with RpcChannel(sink, label="Peer x", token="t", budget=MemoryBudget()) as channel:
        server = Server(channel, limits)
        server.go.set()
        async with server.gate as gate:
            for request in requests(20):
                gate.push(request)
            await server.until(lambda: server.served == 3)
            # three answers of ~1 KB went over 2.5 KB: nothing else starts
            assert gate.in_flight == 0 and gate.waiting == 17 and not server.dropped
            assert channel.queued_bytes > limits.max_outbox_bytes
            await server.until(lambda: server.dropped)
            assert server.served == 3
            (error,) = server.dropped
            assert error.code == "WIRE_PEER_OVER_LIMIT"
            assert error.parameters["limit"] == "drain_timeout"
            with pytest.raises(PeerError):
                await gate.wait_for_queue()


async def test_a_reader_that_reads_is_only_slowed() -> None:
    limits = PeerLimits(
        max_outbox_bytes=2500, drain_timeout=5, max_queued_requests=50, max_requests_in_flight=1
    )
    sink = StuckSink()
    async with RpcChannel(sink, label="Peer x", token="t", budget=MemoryBudget()) as channel:
        server = Server(channel, limits)
        server.go.set()
        async with server.gate as gate:
            for request in requests(40):
                gate.push(request)
            await server.until(lambda: server.served == 3)
            assert gate.in_flight == 0 and gate.waiting == 37  # held back by the outbox
            sink.release.set()  # now it reads
            await server.until(lambda: server.served == 40)
            await channel.idle.wait()
    assert not server.dropped and len(sink.sent) == 40


async def test_the_budget_is_shared_but_an_empty_outbox_may_always_start() -> None:
    budget = MemoryBudget(1500)
    limits = PeerLimits(
        budget=budget, max_outbox_bytes=1 << 20, drain_timeout=5, max_requests_in_flight=1
    )
    hog_sink, other_sink = StuckSink(), StuckSink()
    async with (
        RpcChannel(hog_sink, label="Hog", token="t", budget=budget) as hog_channel,
        RpcChannel(other_sink, label="Other", token="t", budget=budget) as other_channel,
    ):
        hog, other = Server(hog_channel, limits), Server(other_channel, limits)
        hog.go.set()
        other.go.set()
        async with hog.gate, other.gate:
            for request in requests(5):
                hog.gate.push(request)
            await hog.until(lambda: hog.served == 2)
            # the budget stopped it (one answer is being sent, the second waits)
            assert not budget.has_room() and hog.gate.in_flight == 0 and hog.gate.waiting == 3
            for request in requests(2):
                other.gate.push(request)
            await other.until(lambda: other.served == 1)
            # an empty outbox may start one; with an answer queued, the next waits
            assert other.gate.in_flight == 0 and other.gate.waiting == 1
            hog_sink.release.set()  # the hog reads: room comes back for everyone
            other_sink.release.set()
            await hog.until(lambda: hog.served == 5)
            await other.until(lambda: other.served == 2)
            await hog_channel.idle.wait()
            await other_channel.idle.wait()
    assert budget.used == 0


async def test_unknown_methods_are_reported_a_few_times_then_the_peer_dropped() -> None:
    end, _other = pipe_pair()
    reports: list[PeerError] = []
    drops: list[PeerError] = []
    limits = PeerLimits(max_errors=10, logged_errors=3)
    async with RpcChannel(end, label="Peer x", token="t") as channel:
        unknown = UnknownMethods(channel, limits, reports.append, drops.append)
        for i in range(11):
            unknown.refuse(Request(f"u{i}", "dropTables", []))
    assert [e.code for e in reports] == ["WIRE_PROTOCOL_VIOLATION"] * 3
    (drop,) = drops
    assert drop.code == "WIRE_PEER_OVER_LIMIT" and drop.parameters["limit"] == "max_errors"
    assert drop.parameters["not_reported"] == 7


# -- a hostile master over the pipe --------------------------------------------------------


class HugeCheckpoints:
    """A master handler whose batches carry a 30 MB checkpoint."""

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        evil = {"id": "evil", "text": "t", "_deleted": False}
        return ChangesBatch([evil], {"pad": "x" * 30_000_000})

    async def write(self, rows: Any) -> list[Any]:
        return []

    def stream(self) -> Any:
        from reactivex.subject import Subject

        return Subject()


@pytest.fixture
async def fork(tmp_path: Path) -> AsyncIterator[p2pdb.Collection]:
    async with p2pdb.create_database(str(tmp_path / "fork.db")) as db:
        yield await db.add_collection("todos", schema=TODO_SCHEMA)


async def test_a_fork_refuses_a_huge_checkpoint_and_stores_nothing(
    fork: p2pdb.Collection,
) -> None:
    async with WirePipe(HugeCheckpoints()) as pipe:  # type: ignore[arg-type]
        state = replicate(fork, pipe.handler, "huge", live=False)
        errors: list[Exception] = []
        failed = asyncio.Event()
        state.errors.subscribe(lambda e: (errors.append(e), failed.set()))
        async with asyncio.timeout(20):
            await failed.wait()
        await state.cancel()
    assert isinstance(errors[0], PeerError) and errors[0].code == "WIRE_PEER_OVER_LIMIT"
    assert fork.database.storage.get_checkpoint("todos", "huge", "down") is None
    assert await fork.find_one("evil") is None
