"""The fork writes a large stream batch in slices (issue 12), and the rules that keep it sound.

A stream batch of more than ``SLICE_DOCS`` documents is written one slice per transaction,
its checkpoint stored with the last slice only; a small live batch that arrives meanwhile and
shares no document with the unsaved slices is stored between two slices, without moving the
checkpoint. Everything runs over the in-memory wire (``WirePipe``) against a real master
that sends a commit as one stream event, as RxDB's master does (p2pdb's own master splits a
large commit into batches of ``STREAM_BATCH_DOCS``: ``test_a_large_commit_streams_in_batches``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import ID_TEXT_SCHEMA, collection_pair, wait_equal

import p2pdb
from p2pdb.changes import ChangeEvent
from p2pdb.replication import collection_handler, replicate
from p2pdb.replication import master as master_module
from p2pdb.replication.checkpoints import Checkpoints
from p2pdb.replication.downstream import SLICE_DOCS
from p2pdb.replication.testing import WirePipe
from p2pdb.storage import Write

WAIT = 20.0
BULK = 6 * SLICE_DOCS
SCHEMA = ID_TEXT_SCHEMA


@pytest.fixture
async def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(master_module, "STREAM_BATCH_DOCS", 10 * BULK)  # one event per commit
    async with collection_pair(tmp_path, SCHEMA) as collections:
        yield collections


class Recorder:
    """Every change the fork stores, in order, with the down-checkpoint stored right then."""

    def __init__(self, fork: p2pdb.Collection, replication_id: str) -> None:
        self.checkpoints = Checkpoints(fork.database.storage, fork.name, replication_id)
        self.log: list[tuple[str, str, Any]] = []  # (id, text, stored checkpoint)
        self.start = self.checkpoints.down()
        #: bulk documents the fork held when the stored checkpoint first moved (None: not yet)
        self.held_when_moved: int | None = None
        self.fork = fork
        self.changed = asyncio.Condition()
        self._notify: set[asyncio.Task[None]] = set()
        self.subscription = fork.changes.subscribe(on_next=self.on_change)

    def on_change(self, event: ChangeEvent) -> None:
        checkpoint = self.checkpoints.down()
        self.log.append((event.id, event.document.get("text", ""), checkpoint))
        if checkpoint != self.start and self.held_when_moved is None:
            # events follow their commit: count what is stored right now
            rows, _ = self.fork.database.storage.changes_since(self.fork.name, 0, 10 * BULK)
            self.held_when_moved = sum(1 for _, doc in rows if doc["id"].startswith("bulk-"))
        task = asyncio.ensure_future(self._wake())
        self._notify.add(task)
        task.add_done_callback(self._notify.discard)

    async def _wake(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT), self.changed:
            await self.changed.wait_for(condition)

    def bulk_seen(self) -> int:
        return sum(1 for doc_id, _, _ in self.log if doc_id.startswith("bulk-"))

    def close(self) -> None:
        self.subscription.dispose()


def bulk(n: int = BULK) -> list[dict[str, Any]]:
    return [{"id": f"bulk-{i:05}", "text": "x" * 50} for i in range(n)]


async def test_a_live_change_is_stored_between_the_slices_of_a_big_batch(pair: Any) -> None:
    fork, master = pair
    async with WirePipe(collection_handler(master)) as pipe:
        state = replicate(fork, pipe.handler, "slices")
        await state.wait_for_in_sync()
        recorder = Recorder(fork, "slices")
        start = recorder.checkpoints.down()
        await master.bulk_insert(bulk())  # one stream event of BULK documents
        await recorder.until(lambda: recorder.bulk_seen() >= SLICE_DOCS)  # a slice is stored
        assert recorder.bulk_seen() < BULK
        await master.insert({"id": "live-1", "text": "now"})
        await recorder.until(lambda: recorder.bulk_seen() == BULK and "live-1" in _ids(recorder))
        await state.wait_for_in_sync()
        order = _ids(recorder)
        last_bulk = max(i for i, doc_id in enumerate(order) if doc_id.startswith("bulk-"))
        # stored before the last slice, not after the whole batch
        assert order.index("live-1") < last_bulk
        assert recorder.held_when_moved == BULK  # the checkpoint never passed unsaved slices
        final = recorder.checkpoints.down()
        assert final != start
        # live-1 went ahead and was the last event: its checkpoint is stored all the same
        # (queued behind the batch it overtook), so nothing is pulled again after a restart
        assert final == {"seq": master.database.storage.last_seq("docs")}
        after = (await collection_handler(master).changes_since(final, 10)).documents
        # the bulk's checkpoint (the live batch went ahead: it stores none) or a later one
        assert [d["id"] for d in after if isinstance(d, dict)] in ([], ["live-1"])
        assert await fork.count() == BULK + 1
        recorder.close()
        await state.cancel()


async def test_a_live_change_of_an_unsaved_document_waits_for_its_slice(pair: Any) -> None:
    fork, master = pair
    async with WirePipe(collection_handler(master)) as pipe:
        state = replicate(fork, pipe.handler, "slices")
        await state.wait_for_in_sync()
        recorder = Recorder(fork, "slices")
        await master.bulk_insert(bulk())
        await recorder.until(lambda: recorder.bulk_seen() >= SLICE_DOCS)
        last = f"bulk-{BULK - 1:05}"  # in the last slice, not stored yet
        assert last not in _ids(recorder)
        doc = await master.find_one(last)
        assert doc is not None
        await doc.patch({"text": "live"})
        await recorder.until(lambda: any(e[:2] == (last, "live") for e in recorder.log))
        await state.wait_for_in_sync()
        # its bulk state first, then the live one: never rolled back to the bulk state
        assert [text for doc_id, text, _ in recorder.log if doc_id == last] == ["x" * 50, "live"]
        stored = await fork.find_one(last)
        assert stored is not None and stored.to_dict()["text"] == "live"
        recorder.close()
        await state.cancel()


async def test_cancelled_between_slices_resumes_from_a_sound_checkpoint(pair: Any) -> None:
    fork, master = pair
    async with WirePipe(collection_handler(master)) as pipe:
        state = replicate(fork, pipe.handler, "slices")
        await state.wait_for_in_sync()
        recorder = Recorder(fork, "slices")
        start = recorder.checkpoints.down()
        await master.bulk_insert(bulk())
        await recorder.until(lambda: recorder.bulk_seen() >= SLICE_DOCS)
        await state.cancel()  # a slice being written commits; the rest never starts
        stored = recorder.bulk_seen()
        assert SLICE_DOCS <= stored < BULK
        assert stored % SLICE_DOCS == 0  # whole slices only
        assert recorder.checkpoints.down() == start  # not past the unsaved slices
        assert recorder.held_when_moved is None

        state = replicate(fork, pipe.handler, "slices")  # the restart
        await state.wait_for_in_sync()
        assert recorder.bulk_seen() == BULK  # the stored rows were pulled again, not rewritten
        assert await fork.count() == BULK
        final = recorder.checkpoints.down()
        assert (await collection_handler(master).changes_since(final, 10)).documents == []
        ours = {d.id: d.to_dict()["text"] for d in await fork.find()}
        theirs = {d.id: d.to_dict()["text"] for d in await master.find()}
        assert ours == theirs
        recorder.close()
        await state.cancel()


def _ids(recorder: Recorder) -> list[str]:
    return [doc_id for doc_id, _, _ in recorder.log]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "plain"])
async def test_a_large_commit_streams_in_batches(tmp_path: Path, causal: bool) -> None:
    """p2pdb's master sends a commit of more than ``STREAM_BATCH_DOCS`` documents as
    several stream batches, in order, each with the checkpoint of its own last document
    (never past one it does not hold), the last one past every event of the commit.
    A remote without causal vectors (RxDB) gets batches of ``PLAIN_STREAM_BATCH_DOCS``."""
    plain = master_module.PLAIN_STREAM_BATCH_DOCS
    size = master_module.STREAM_BATCH_DOCS if causal else plain
    assert plain > master_module.STREAM_BATCH_DOCS
    async with collection_pair(tmp_path, SCHEMA) as (fork, master):
        handler = collection_handler(master, origin="peer")
        if causal:
            handler = handler.with_causal_order(revs=False)
        seen: list[Any] = []
        subscription = handler.stream(skip_own=True).subscribe(on_next=seen.append)
        try:
            await master.bulk_insert(bulk(2 * size + 50))
            assert [len(b.documents) for b in seen] == [size, size, 50]
            rows, _ = master.database.storage.changes_since(master.name, 0, 10 * size)
            seq_of = {doc["id"]: seq for seq, doc in rows}
            for batch in seen:
                assert batch.checkpoint == {"seq": seq_of[batch.documents[-1]["id"]]}
            assert [d["id"] for b in seen for d in b.documents] == [
                f"bulk-{i:05}" for i in range(2 * size + 50)
            ]
            # the handler's own writes are skipped; the last batch still moves past them
            seen.clear()
            own = [Write(master.prepare({"id": f"own-{i}", "text": "o"})) for i in range(size)]
            await master.bulk_write(own, origin="peer")
            assert [len(b.documents) for b in seen] == [0]
            assert seen[0].checkpoint == {"seq": master.database.storage.last_seq(master.name)}
        finally:
            subscription.dispose()
        # and a fork over the wire ends up with all of it and the master's last checkpoint
        async with WirePipe(collection_handler(master)) as pipe:
            state = replicate(fork, pipe.handler, "batches")
            await state.wait_for_in_sync()
            assert await fork.count() == 3 * size + 50
            await master.bulk_insert([{"id": f"late-{i}", "text": "l"} for i in range(size + 1)])
            await wait_equal(fork, master, seconds=WAIT)
            await state.wait_for_in_sync()
            stored = Checkpoints(fork.database.storage, fork.name, "batches").down()
            assert stored == {"seq": master.database.storage.last_seq(master.name)}
            await state.cancel()
