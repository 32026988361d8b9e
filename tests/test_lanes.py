"""Priority lanes for live traffic (issue 12), and the checkpoint rules that keep them sound.

Master to fork: a stream event of a few documents goes ahead of a bulk stream event being
sent (p2pdb.replication.lanes), carrying the checkpoint of the last message sent completely
in order, never overtaking an answer or an unsent message holding one of its documents.
Fork to master: a small local commit is pushed at once beside a bulk push batch in flight
(p2pdb.replication.upstream), never moving the up-checkpoint, never pushing a document the
bulk batch holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import ID_TEXT_SCHEMA, HandlerWrapper, collection_pair

import p2pdb
from p2pdb.replication import WriteRow, collection_handler, replicate
from p2pdb.replication.checkpoints import Checkpoints
from p2pdb.replication.lanes import LIVE_MAX_DOCS
from p2pdb.replication.limits import json_size
from p2pdb.replication.rpc import STREAM_ID, RpcChannel
from p2pdb.replication.testing import WirePipe

WAIT = 10.0
SCHEMA = ID_TEXT_SCHEMA


async def until(changed: asyncio.Condition, condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, re-checked each time ``changed`` is notified."""
    async with asyncio.timeout(WAIT), changed:
        await changed.wait_for(condition)


class SlowSink:
    """A sink that holds every message over ``big`` bytes until :attr:`release` is set (a
    large message being sent), and records the order in which messages were handed over."""

    def __init__(self, big: int = 2000) -> None:
        self.big = big
        self.sent: list[Any] = []
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.changed = asyncio.Condition()

    async def send(self, message: object) -> None:
        if json_size(message) > self.big:
            self.holding.set()
            await self.release.wait()
        self.sent.append(message)
        async with self.changed:
            self.changed.notify_all()

    async def count(self, n: int) -> None:
        """Wait until ``n`` messages were handed over."""
        await until(self.changed, lambda: len(self.sent) == n)


def batch(ids: Sequence[str], seq: int, text: str = "x") -> dict[str, Any]:
    return {"documents": [{"id": i, "text": text} for i in ids], "checkpoint": {"seq": seq}}


def events(sink: SlowSink) -> list[tuple[list[str], object]]:
    """(document ids, checkpoint) of each stream event handed to the sink, in order."""
    return [
        ([d["id"] for d in m["result"]["documents"]], m["result"]["checkpoint"])
        for m in sink.sent
        if m.get("id") == STREAM_ID and isinstance(m.get("result"), dict)
    ]


BULK = [f"b{i}" for i in range(200)]


async def channel_with_floor(sink: SlowSink) -> RpcChannel:
    """A started channel that has sent one small batch in order (checkpoint seq 1)."""
    channel = RpcChannel(sink, label="test", token="t", primary_key="id")
    await channel.start()
    channel.post_event(batch(["first"], 1))
    await sink.count(1)
    return channel


async def test_a_live_event_overtakes_a_bulk_event_with_the_floor_checkpoint() -> None:
    sink = SlowSink()
    async with await channel_with_floor(sink) as channel:
        channel.post_event(batch(BULK, 201))
        await sink.holding.wait()  # the bulk event is being sent
        channel.post_event(batch(["live"], 202))
        await sink.count(2)
        # ahead of the bulk, with the checkpoint of the last batch sent completely: the
        # fork never stores seq 202 while the documents up to 201 may still be missing
        assert events(sink)[1] == (["live"], {"seq": 1})
        assert channel.lane.taken == 1
        sink.release.set()
        await sink.count(3)
        assert events(sink)[2] == (BULK, {"seq": 201})  # the bulk keeps its own


class QueueGauge:
    """A transport's queue that urgent frames overtake (as aiortc's with sctp_flush):
    every in-order message is "handed" at once and leaves the queue on :meth:`flush`."""

    def __init__(self, sink: SlowSink) -> None:
        self.sink = sink
        self.flushed_to = 0

    def handed(self) -> int:
        return len(self.sink.sent)

    def flushed(self) -> int:
        return self.flushed_to


async def test_with_a_gauge_the_floor_is_the_last_message_past_the_transports_queue() -> None:
    sink = SlowSink()
    gauge = QueueGauge(sink)
    channel = RpcChannel(sink, label="test", token="t", primary_key="id", gauge=gauge)
    async with channel:
        channel.post_event(batch(["first"], 1))
        channel.post_event(batch(["second"], 2))
        await sink.count(2)
        assert not channel.lane.has_floor()  # both may still be overtaken in the queue
        gauge.flushed_to = 1  # "first" left the queue, "second" did not
        channel.post_event(batch(BULK, 201))
        await sink.holding.wait()
        channel.post_event(batch(["live"], 202))
        await sink.count(3)
        # the floor is "first"'s: "second" may still be behind the live event on the wire
        assert events(sink)[2] == (["live"], {"seq": 1})
        gauge.flushed_to = 2
        channel.post_event(batch(["live2"], 203))
        await sink.count(4)
        assert events(sink)[3] == (["live2"], {"seq": 2})
        sink.release.set()
        await sink.count(5)
        gauge.flushed_to = 5
        assert channel.lane.floor == {"seq": 201}  # pending floors are dropped as they pass


async def test_a_live_event_never_overtakes_an_older_state_of_its_document() -> None:
    sink = SlowSink()
    async with await channel_with_floor(sink) as channel:
        channel.post_event(batch(BULK, 201))
        await sink.holding.wait()
        channel.post_event(batch(["b7"], 202, text="newer"))  # b7 is in the bulk
        # a queued batch too large for the live lane holds q3: a live q3 waits behind it
        queued = [f"q{i}" for i in range(LIVE_MAX_DOCS + 1)]
        channel.post_event(batch(queued, 219))
        channel.post_event(batch(["q3"], 220, text="newer"))
        channel.post_event(batch(["other"], 221))  # no shared document: goes ahead
        await sink.count(2)
        assert events(sink)[1] == (["other"], {"seq": 1})
        sink.release.set()
        await sink.count(6)
        assert events(sink)[2:] == [
            (BULK, {"seq": 201}),
            (["b7"], {"seq": 202}),
            (queued, {"seq": 219}),
            (["q3"], {"seq": 220}),
        ]


async def test_a_live_event_never_overtakes_an_answer() -> None:
    sink = SlowSink()
    async with await channel_with_floor(sink) as channel:
        # a masterChangesSince answer being sent: a stream event arriving before it is
        # taken by the fork as covered by it, so it must not get there first
        channel.answer("r1", batch(BULK, 150))
        await sink.holding.wait()
        channel.post_event(batch(["live"], 202))
        channel.post({"id": "r2", "result": "RESYNC-like"})  # any answer
        await asyncio.sleep(0)
        assert len(sink.sent) == 1 and channel.lane.taken == 0
        sink.release.set()
        await sink.count(4)
        assert sink.sent[1]["id"] == "r1"
        assert events(sink)[1] == (["live"], {"seq": 202})  # in order, its own checkpoint


async def test_the_floor_comes_from_answers_too_and_none_means_in_order() -> None:
    sink = SlowSink()
    async with RpcChannel(sink, label="test", token="t", primary_key="id") as channel:
        channel.post_event(batch(BULK, 201))
        await sink.holding.wait()
        channel.post_event(batch(["early"], 202))  # nothing sent completely yet: no floor
        await asyncio.sleep(0)
        assert len(sink.sent) == 0
        sink.release.set()
        await sink.count(2)
        assert events(sink)[1] == (["early"], {"seq": 202})
        # a changes answer sent completely is a floor: the fork holds what it covers
        channel.answer("r1", batch(["a"], 300))
        sink.release.clear()
        channel.post_event(batch(BULK, 400))
        await sink.count(3)
        await asyncio.sleep(0)
        channel.post_event(batch(["late"], 401))
        await sink.count(4)
        assert events(sink)[2] == (["late"], {"seq": 300})
        sink.release.set()


async def test_nothing_posted_after_a_live_event_reaches_the_sink_before_it() -> None:
    sink = SlowSink()
    live_gate = asyncio.Event()
    send = sink.send

    async def slow_live(message: object) -> None:
        result = message.get("result") if isinstance(message, dict) else None
        if isinstance(result, dict) and result["documents"] == [{"id": "live", "text": "x"}]:
            await live_gate.wait()  # a transport slow to take the live event
        await send(message)

    sink.send = slow_live  # type: ignore[method-assign]
    async with await channel_with_floor(sink) as channel:
        channel.post_event(batch(BULK, 201))
        await sink.holding.wait()
        channel.post_event(batch(["live"], 202))  # goes ahead, held in the transport
        channel.answer("r1", "after the live event")
        sink.release.set()
        await sink.count(2)  # the bulk
        await asyncio.sleep(0)
        assert len(sink.sent) == 2  # the answer waits for the live event it came after
        live_gate.set()
        await sink.count(4)
        assert [m["id"] for m in sink.sent[2:]] == [STREAM_ID, "r1"]


async def test_large_or_anonymous_events_stay_in_order() -> None:
    sink = SlowSink()
    async with await channel_with_floor(sink) as channel:
        channel.post_event(batch(BULK, 201))
        await sink.holding.wait()
        many = [f"m{i}" for i in range(LIVE_MAX_DOCS + 1)]
        channel.post_event(batch(many, 230))  # too many documents for the live lane
        plain = RpcChannel(SlowSink(), label="plain", token="t")  # no primary key: no lane
        assert plain.primary_key is None
        await asyncio.sleep(0)
        assert len(sink.sent) == 1
        sink.release.set()
        await sink.count(3)
        assert [ids for ids, _ in events(sink)] == [["first"], BULK, many]


# -- the push lanes ------------------------------------------------------------------------


class GatedMaster(HandlerWrapper):
    """A master handler whose bulk pushes after the first one wait for :attr:`gate`, and
    which records the ids of every push it got (in arrival order)."""

    def __init__(self, collection: p2pdb.Collection) -> None:
        super().__init__(collection_handler(collection))
        self.gate = asyncio.Event()
        self.blocked = asyncio.Event()
        self.pushes: list[list[str]] = []
        self.done: list[list[str]] = []
        self.changed = asyncio.Condition()

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        ids = [row.new_document_state["id"] for row in rows]
        self.pushes.append(ids)
        bulk = sum(1 for p in self.pushes if any(i.startswith("bulk-") for i in p))
        if any(i.startswith("bulk-") for i in ids) and bulk > 1:
            self.blocked.set()
            await self.gate.wait()
        result = await self.inner.write(rows)
        self.done.append(ids)
        async with self.changed:
            self.changed.notify_all()
        return result

    async def wait_done(self, ids: list[str]) -> None:
        """Wait until a push of exactly ``ids`` was written."""
        await until(self.changed, lambda: ids in self.done)


@pytest.fixture
async def pair(tmp_path: Path) -> Any:
    async with collection_pair(tmp_path, SCHEMA) as collections:
        yield collections


def seqs(collection: p2pdb.Collection) -> dict[str, int]:
    pairs, _ = collection.database.storage.changes_since(collection.name, 0, 100_000)
    return {state["id"]: seq for seq, state in pairs}


async def test_a_live_push_goes_beside_a_blocked_bulk_push(pair: Any) -> None:
    fork, master = pair
    gated = GatedMaster(master)
    async with WirePipe(gated) as pipe:
        state = replicate(fork, pipe.handler, "lanes", batch_size=50)
        await state.wait_for_in_sync()
        await fork.bulk_insert([{"id": f"bulk-{i:03}", "text": "x"} for i in range(200)])
        async with asyncio.timeout(WAIT):
            await gated.blocked.wait()  # the second bulk batch waits at the master
        await fork.insert({"id": "live-1", "text": "now"})
        await gated.wait_done(["live-1"])  # while the bulk batch still waits
        assert await master.find_one("live-1") is not None
        assert await master.count() == 51
        # the up-checkpoint never covers a row the master has not acknowledged
        up = Checkpoints(fork.database.storage, "docs", "lanes").up()
        at = seqs(fork)
        assert up < at["live-1"]
        held = {doc.id for doc in await master.find()}
        assert {i for i, s in at.items() if s <= up} <= held
        gated.gate.set()
        await state.wait_for_in_sync()
        assert await master.count() == 201
        assert Checkpoints(fork.database.storage, "docs", "lanes").up() == max(seqs(fork).values())
        # the bulk lane walked past live-1 and found it pushed: it went out once
        assert sum(p.count("live-1") for p in gated.pushes) == 1
        await state.cancel()


async def test_the_live_lane_leaves_a_document_in_flight_to_the_bulk_lane(pair: Any) -> None:
    fork, master = pair
    gated = GatedMaster(master)
    async with WirePipe(gated) as pipe:
        state = replicate(fork, pipe.handler, "lanes", batch_size=50)
        await state.wait_for_in_sync()
        await fork.bulk_insert([{"id": f"bulk-{i:03}", "text": "v1"} for i in range(100)])
        async with asyncio.timeout(WAIT):
            await gated.blocked.wait()  # bulk-050..099 wait at the master
        doc = await fork.find_one("bulk-060")
        assert doc is not None
        await doc.patch({"text": "v2"})  # a small commit of a document in that batch
        await fork.insert({"id": "live-2", "text": "now"})
        await gated.wait_done(["live-2"])
        # never two pushes of one document at once: bulk-060 went only in the bulk batch
        assert sum(p.count("bulk-060") for p in gated.pushes) == 1
        gated.gate.set()
        await state.wait_for_in_sync()
        moved = await master.find_one("bulk-060")
        assert moved is not None and moved.to_dict()["text"] == "v2"  # pushed after, by the bulk
        assert await master.count() == 101
        await state.cancel()
