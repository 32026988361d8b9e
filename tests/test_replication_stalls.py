"""The convergence stalls of the randomized replication tests, each reduced to a fixed order.

- ``pause()`` landing while the push direction stops its live pushes after a failed push:
  the cancellation was swallowed (``suppress(CancelledError)`` around awaiting the live
  push: the caller's cancellation and the task's look alike), the direction retried for
  ever and ``pause()``, ``cancel()`` and closing the database never returned.
- A stream batch holding a doubtful state (one sent before our push of that document was
  answered) queued a ``RESYNC`` behind later batches, which stored their checkpoints past
  it: the pull then started after the doubtful state, and the fork kept its own older
  state of the document for good.
- The checkpoint of a batch that went ahead, stored last from its queued floor, was
  written without the direction being busy: ``state.active`` never told a waiter.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import ID_TEXT_SCHEMA, HandlerWrapper, collection_pair

import p2pdb
from p2pdb.errors import PeerError
from p2pdb.replication import WriteRow, collection_handler, replicate
from p2pdb.replication.lanes import LIVE_MAX_DOCS
from p2pdb.tasks import cancel_and_wait, settle

WAIT = 10.0
SCHEMA = ID_TEXT_SCHEMA


class ScriptedMaster(HandlerWrapper):
    """A master collection's handler whose pushes run a test's script: ``on_write(ids)``
    runs after the master stored a push and before it is answered (or fails it)."""

    def __init__(self, collection: p2pdb.Collection) -> None:
        super().__init__(collection_handler(collection))
        self.on_write: Callable[[list[str]], Awaitable[None]] | None = None

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        script, self.on_write = self.on_write, None  # once
        ids = [row.new_document_state["id"] for row in rows]
        if script is not None and ids[0] == "fails":
            await script(ids)  # raises
        result = await self.inner.write(rows)
        if script is not None:
            await script(ids)
        return result


@pytest.fixture
async def pair(tmp_path: Path) -> Any:
    async with collection_pair(tmp_path, SCHEMA) as collections:
        yield collections


async def text(collection: p2pdb.Collection, doc_id: str) -> str | None:
    doc = await collection.find_one(doc_id)
    return None if doc is None else str(doc.to_dict()["text"])


async def test_pause_ends_the_push_direction_while_it_stops_its_live_pushes(pair: Any) -> None:
    """The push direction fails while a live push waits for the persist lock; its run()
    cancels that live push and waits for it, and pause() lands right then."""
    fork, master = pair
    handler = ScriptedMaster(master)
    pulling = asyncio.Event()  # the pull holds the persist lock, inside its pull_modifier
    let_pull_go = asyncio.Event()
    push_failed = asyncio.Event()

    async def hold_the_pull(doc: dict[str, Any]) -> dict[str, Any]:
        if doc["id"] == "m":
            pulling.set()
            await let_pull_go.wait()
        return doc

    async def fail(ids: list[str]) -> None:
        push_failed.set()
        raise PeerError("the link dropped", code="PEER_DISCONNECTED")

    state = replicate(fork, handler, "stall", pull_modifier=hold_the_pull, retry_delay=0.01)
    await state.wait_for_in_sync()
    async with asyncio.timeout(WAIT):
        await master.insert({"id": "m", "text": "pulled"})
        await pulling.wait()
        handler.on_write = fail
        await fork.insert({"id": "fails", "text": "bulk"})  # the bulk lane waits for the lock
        await fork.insert({"id": "live", "text": "live"})  # a live push waits behind it
        let_pull_go.set()
        await push_failed.wait()  # the bulk push failed: its run() now stops the live push
    pausing = asyncio.ensure_future(state.pause())
    done, _ = await asyncio.wait({pausing}, timeout=WAIT)
    assert pausing in done, "pause() never returned: the push direction lost its cancellation"
    await pausing
    assert not state.is_in_sync()  # paused
    await state.start()  # and it resumes: everything reaches the master
    await state.wait_for_in_sync()
    assert await text(master, "fails") == "bulk" and await text(master, "live") == "live"
    await state.cancel()


async def test_a_doubtful_stream_batch_is_pulled_again_before_later_checkpoints(
    pair: Any,
) -> None:
    """The master changes a pushed document before the push is answered, then writes a
    batch too big to go ahead: the fork must end with the master's state."""
    fork, master = pair
    handler = ScriptedMaster(master)
    state = replicate(fork, handler, "doubtful", retry_delay=0.01)
    await state.wait_for_in_sync()

    async def master_moves_on(ids: list[str]) -> None:
        # the stream carries these to the fork before the push's answer: the first is
        # doubtful there (it may predate the push), the second stores a later checkpoint
        await master.upsert({"id": "x", "text": "master's, after the push"})
        many = [{"id": f"later-{i:02}", "text": "x"} for i in range(LIVE_MAX_DOCS + 1)]
        await master.bulk_insert(many)

    handler.on_write = master_moves_on
    await fork.insert({"id": "x", "text": "fork's"})
    await state.wait_for_in_sync()
    assert await text(master, "x") == "master's, after the push"
    assert await text(fork, "x") == "master's, after the push"
    assert await fork.count() == await master.count() == LIVE_MAX_DOCS + 2
    assert state.down_checkpoint == {"seq": master.database.storage.last_seq("docs")}
    await state.cancel()


async def test_the_floor_checkpoint_is_stored_while_active(pair: Any) -> None:
    """A live batch goes ahead of one being written; its checkpoint, stored last from the
    floor it queued, is stored while ``state.active`` is True, like every pull write, so
    a waiter on ``active`` sees the final checkpoint."""
    fork, master = pair
    # pull only: the push direction walking past the pulled documents would keep
    # `active` True over the whole sequence
    state = replicate(fork, collection_handler(master), "floor", push=False, retry_delay=0.01)
    await state.wait_for_in_sync()
    seen: list[tuple[bool, Any]] = []
    busy = asyncio.Event()

    def on_active(active: bool) -> None:
        seen.append((active, state.down_checkpoint))
        if active:
            busy.set()

    state.active.subscribe(on_active)
    busy.clear()
    gate = threading.Event()  # holds the fork's writer thread: the pull's write waits
    holding = asyncio.ensure_future(fork.database.storage.write(lambda txn: gate.wait(WAIT)))
    try:
        async with asyncio.timeout(WAIT):
            await master.insert({"id": "w", "text": "written in order"})
            await busy.wait()  # its write waits for the writer thread
            await master.insert({"id": "y", "text": "live"})  # goes ahead of it
    finally:
        gate.set()
    await holding
    async with asyncio.timeout(WAIT):
        await state.wait_for_in_sync()
    last = {"seq": master.database.storage.last_seq("docs")}
    assert state.down_checkpoint == last
    assert seen[-1] == (False, last)  # the last store was published
    assert await text(fork, "y") == "live" and await text(fork, "w") == "written in order"
    await state.cancel()


# -- p2pdb.tasks -----------------------------------------------------------------------------


async def test_cancel_and_wait_raises_the_callers_cancellation_once_the_tasks_ended() -> None:
    cancelled, let_go, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            await let_go.wait()  # e.g. a write it must see to its end
            ended.set()
            raise

    child = asyncio.ensure_future(slow_to_end())
    await asyncio.sleep(0)  # it starts
    stopping = asyncio.ensure_future(cancel_and_wait([child]))
    async with asyncio.timeout(WAIT):
        await cancelled.wait()
    stopping.cancel()  # the caller is cancelled while it waits for the child
    await asyncio.sleep(0)
    assert not stopping.done()  # it still waits for the child ...
    let_go.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await stopping  # ... and then raises the cancellation, never swallowing it
    assert ended.is_set() and child.cancelled()


async def test_settle_waits_and_raises_the_first_failure() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def ends() -> int:
        return 1

    tasks = [asyncio.ensure_future(ends()), asyncio.ensure_future(fails())]
    with pytest.raises(ValueError, match="boom"):
        await settle(tasks)
    assert all(task.done() for task in tasks)
    await settle([])  # nothing to wait for
