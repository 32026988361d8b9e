"""How a master learns that its fork is in sync (``pool.wait_for_in_sync()`` as the master):
the ``RESYNC`` rounds of ``acks.py``, and the fork that holds a ``RESYNC`` and its pulls
until its pending pushes went out.

Before: the master took any ``masterChangesSince`` arriving after its ``RESYNC`` as the
answer, and a fork holding the ``RESYNC`` still sent the next request of a pull under way.
That request said nothing about the fork's pushes: the master left, and the fork's write
never reached it (``test_webrtc_sync_then_exit`` on the native engine, about 1 run in 3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from reactivex import Observable
from reactivex.subject import Subject
from replication_helpers import ID_TEXT_SCHEMA, HandlerWrapper, collection_pair

import p2pdb
from p2pdb.plugins.replication_webrtc.acks import AckRounds
from p2pdb.replication import RESYNC, ChangesBatch, Resync, WriteRow, collection_handler, replicate
from p2pdb.replication.protocol import to_wire

WAIT = 10.0
SCHEMA = ID_TEXT_SCHEMA


class Posts:
    """Counts the ``RESYNC`` events an :class:`AckRounds` posts."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_a_request_that_arrives_before_any_answer_since_the_round_does_not_answer_it() -> None:
    posts = Posts()
    acks = AckRounds(posts)
    round_number = acks.ask()
    assert posts.count == 1
    # it may have crossed the RESYNC (sent before the fork saw it): it answers no round
    rounds = acks.arrived()
    acks.served(rounds, 5)
    assert acks.acked_seq == 5 and not acks.since(round_number, 5)
    assert posts.count == 2  # asked again: the fork may have no pull left to run
    # the next request was sent after our answer, which followed the RESYNC
    acks.served(acks.arrived(), 5)
    assert acks.since(round_number, 5)
    assert posts.count == 2  # nothing crossed: no more RESYNCs


def test_a_request_answers_a_round_only_with_a_checkpoint_at_or_past_the_target() -> None:
    acks = AckRounds(Posts())
    acks.served(acks.arrived(), 1)  # before any round: no RESYNC posted for it
    round_number = acks.ask()
    acks.served(acks.arrived(), 2)  # crossed
    acks.served(acks.arrived(), 2)
    assert acks.since(round_number, 2) and not acks.since(round_number, 3)
    assert not acks.since(round_number + 1, 2)


def test_an_unreadable_checkpoint_acknowledges_nothing() -> None:
    acks = AckRounds(Posts())
    round_number = acks.ask()
    acks.served(acks.arrived(), None)
    acks.served(acks.arrived(), None)
    assert acks.acked_round == 0 and not acks.since(round_number, 0)


class HeldMaster(HandlerWrapper):
    """A master's handler: the test posts its stream (``events``), holds its pushes
    (``write_open``) and one of its pulls (``pull_open``, from request ``hold_pull``),
    and reads the order of calls (``log``)."""

    def __init__(self, collection: p2pdb.Collection) -> None:
        super().__init__(collection_handler(collection))
        self.events: Subject[ChangesBatch | Resync] = Subject()
        self.log: list[str] = []
        self.write_open = asyncio.Event()
        self.write_open.set()
        self.write_called = asyncio.Event()
        self.pull_open = asyncio.Event()
        self.pull_open.set()
        self.pull_held = asyncio.Event()
        self.next_pull = asyncio.Event()  # the request after the held one came
        self.hold_pull = 0  # the number of the changes_since call to hold (0: none)

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        self.log.append("pull")
        if self.log.count("pull") == self.hold_pull + 1:
            self.next_pull.set()
        if self.log.count("pull") == self.hold_pull:
            self.pull_held.set()
            await self.pull_open.wait()
        return await self.inner.changes_since(checkpoint, batch_size)

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        self.write_called.set()
        await self.write_open.wait()
        result = await self.inner.write(rows)
        self.log.append("pushed")
        return result

    def stream(self) -> Observable[ChangesBatch | Resync]:
        return self.events


async def test_a_held_resync_holds_the_next_request_of_a_pull_under_way(tmp_path: Path) -> None:
    async with collection_pair(tmp_path, SCHEMA) as (fork, master):
        await master.bulk_insert([{"id": f"m{i}", "text": "m"} for i in range(4)])
        handler = HeldMaster(master)
        handler.hold_pull = 2  # the initial pull, one document a request
        handler.pull_open.clear()
        state = replicate(fork, handler, "held", batch_size=1)
        async with asyncio.timeout(WAIT):
            await handler.pull_held.wait()
        # a local write whose push is held, then the master's RESYNC (held: a push pends)
        handler.write_open.clear()
        await fork.insert({"id": "f", "text": "from the fork"})
        async with asyncio.timeout(WAIT):
            await handler.write_called.wait()
        handler.events.on_next(RESYNC)
        handler.pull_open.set()  # the pull under way goes on
        # before: its next request (asked ahead while the batch is stored) went out at
        # once, with the push still pending; a master took it for the RESYNC's answer
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await handler.next_pull.wait()
        assert handler.log.count("pull") == 2, handler.log
        handler.write_open.set()
        await state.wait_for_in_sync()
        # the pull went on only after the push was answered
        assert handler.log.index("pushed") == 2, handler.log
        assert {d.id for d in await fork.find()} == {"m0", "m1", "m2", "m3", "f"}
        await state.cancel()


def test_the_forks_own_pushes_after_what_it_acknowledged_count_as_held() -> None:
    """A fork's own pushes come back to it as an empty stream batch, and no request may
    follow to acknowledge them: before, the CLI's status of a master stayed "syncing" with
    both sides holding everything (test_cli, about 1 run in 3 under load)."""
    acks = AckRounds(Posts())
    acks.own_push(3, 5)  # the fork pushed seqs 4 and 5 before acknowledging 3
    assert acks.held() == 0  # it has not shown that it holds 1-3
    acks.served(acks.arrived(), 3)
    assert acks.held() == 5
    acks.own_push(7, 8)  # seqs 6 and 7 are the master's own: not held
    assert acks.held() == 5


async def test_no_stream_event_after_a_held_resync_moves_the_checkpoint(tmp_path: Path) -> None:
    """A RESYNC (a reconnect) says stream events may be lost before it. Held while a push
    pends, it must still stop the fork from applying later events: their checkpoints would
    pass the lost ones, and the pull it makes at last would start after them."""
    async with collection_pair(tmp_path, SCHEMA) as (fork, master):
        handler = HeldMaster(master)
        state = replicate(fork, handler, "gap")
        await state.wait_for_in_sync()
        handler.write_open.clear()  # a push pends: the RESYNC below is held
        await fork.insert({"id": "f", "text": "from the fork"})
        async with asyncio.timeout(WAIT):
            await handler.write_called.wait()
        await master.insert({"id": "lost", "text": "its stream event never arrives"})
        handler.events.on_next(RESYNC)  # the link came back
        await master.insert({"id": "after", "text": "streamed"})
        pairs, _ = master.database.storage.changes_since("docs", 0, 100)
        seq, after = next((seq, state) for seq, state in pairs if state["id"] == "after")
        handler.events.on_next(ChangesBatch([to_wire(after)], {"seq": seq}))
        handler.write_open.set()
        await state.wait_for_in_sync()
        assert {d.id for d in await fork.find()} == {"f", "lost", "after"}
        await state.cancel()
