"""The push passes over rows the pull wrote (``p2pdb.replication.pulled``), and only those.

A fork pulling a bulk used to read back every row it had just written and compare it with its
assumed master state, only to push nothing. These tests count the states the push's walk reads
(``storage.changes_since``) and check that what must be pushed still is: a pulled document
edited locally, a conflict resolution, everything again once the remembered revisions are gone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import ID_TEXT_SCHEMA, collection_pair, wait_equal

import p2pdb
from p2pdb.replication import collection_handler, replicate
from p2pdb.replication.checkpoints import Checkpoints
from p2pdb.replication.pulled import PulledRevisions
from p2pdb.replication.testing import WirePipe

WAIT = 20.0


class ReadCounter:
    """Counts the states ``changes_since`` of ``storage`` hands out, by id."""

    def __init__(self, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read: list[str] = []
        inner = storage.changes_since

        def counting(*args: Any, **kwargs: Any) -> Any:
            pairs, last = inner(*args, **kwargs)
            self.read.extend(state["id"] for _, state in pairs)
            return pairs, last

        monkeypatch.setattr(storage, "changes_since", counting)


def docs(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i:04}", "text": prefix} for i in range(n)]


def test_pulled_revisions_remember_until_passed_and_stay_bounded() -> None:
    pulled = PulledRevisions(limit=3)
    pulled.note("a", "1-x")
    assert pulled.holds("a", "1-x") and not pulled.holds("a", "2-y")
    assert not pulled.holds("b", "1-x")
    assert pulled.passes("a", "1-x") and not pulled.passes("a", "1-x")  # forgotten once passed
    pulled.note("a", "2-y")
    assert not pulled.passes("a", "1-x") and not pulled.holds("a", "2-y")  # moved on: read
    for doc_id in "bcd":
        pulled.note(doc_id, "1-x")
    pulled.note("e", "1-x")  # over the bound: the others are forgotten, never wrongly held
    assert len(pulled) == 1 and pulled.holds("e", "1-x") and not pulled.holds("b", "1-x")


async def test_a_pulled_bulk_is_not_read_back_by_the_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with collection_pair(tmp_path, ID_TEXT_SCHEMA) as (fork, master):
        await master.bulk_insert(docs("first", 300))
        async with WirePipe(collection_handler(master)) as pipe:
            state = replicate(fork, pipe.handler, "pulled")
            await state.wait_for_in_sync()
            counter = ReadCounter(fork.database.storage, monkeypatch)
            await master.bulk_insert(docs("bulk", 700))  # streamed: 4 batches, 4 commits
            await wait_equal(fork, master, seconds=WAIT)
            await state.wait_for_in_sync()
            assert [i for i in counter.read if i.startswith("bulk")] == []
            # a local edit of a pulled document has a new revision: read and pushed
            await fork.upsert({"id": "bulk-0005", "text": "edited on the fork"})
            await wait_equal(fork, master, seconds=WAIT)
            await state.wait_for_in_sync()
            assert set(counter.read) == {"bulk-0005"}
            edited = await master.find_one("bulk-0005")
            assert edited is not None and edited.to_dict()["text"] == "edited on the fork"
            # the up-checkpoint moved past every pulled row on the way
            up = Checkpoints(fork.database.storage, fork.name, "pulled").up()
            assert up == fork.database.storage.last_seq(fork.name)
            await state.cancel()


async def test_without_the_remembered_revisions_everything_is_read_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shortcut forgotten (a restart, or a pull-only run before): the walk reads the
    pulled rows and pushes none of them."""
    async with collection_pair(tmp_path, ID_TEXT_SCHEMA) as (fork, master):
        await master.bulk_insert(docs("bulk", 250))
        async with WirePipe(collection_handler(master)) as pipe:
            pushed: list[int] = []
            state = replicate(fork, pipe.handler, "pulled", push=False)  # walks nothing
            state.sent.subscribe(on_next=lambda doc: pushed.append(1))
            await state.wait_for_in_sync()
            await state.cancel()
            counter = ReadCounter(fork.database.storage, monkeypatch)
            again = replicate(fork, pipe.handler, "pulled")  # a new state: nothing remembered
            await fork.insert({"id": "local", "text": "wakes the push"})
            await wait_equal(fork, master, seconds=WAIT)
            await again.wait_for_in_sync()
            # (the live lane may read the local write too)
            assert set(counter.read) == {"local", *(d["id"] for d in docs("bulk", 250))}
            assert pushed == []
            await again.cancel()


async def test_conflict_resolutions_are_still_pushed(tmp_path: Path) -> None:
    """A resolution is written with the replication's origin, like a pull, but is no pulled
    state: the push must send it."""

    def merge(conflict: Any) -> dict[str, Any]:
        return {**conflict.real_master_state, "text": "merged"}

    dbs = [await p2pdb.create_database(str(tmp_path / f"{n}.db")) for n in ("fork", "master")]
    fork, master = [
        await db.add_collection("docs", schema=ID_TEXT_SCHEMA, conflict_handler=merge) for db in dbs
    ]
    try:
        await master.bulk_insert(docs("bulk", 200))
        async with replicate(fork, collection_handler(master), "pulled") as state:
            await state.wait_for_in_sync()
            await state.pause()
            await master.upsert({"id": "bulk-0007", "text": "master"})
            await fork.upsert({"id": "bulk-0007", "text": "fork"})
            await state.start()
            await wait_equal(fork, master, seconds=WAIT)
            await state.wait_for_in_sync()
        doc = await master.find_one("bulk-0007")
        assert doc is not None and doc.to_dict()["text"] == "merged"
    finally:
        for db in dbs:
            await db.close()


async def test_a_fork_that_only_pulls_still_moves_its_up_checkpoint(tmp_path: Path) -> None:
    """Commits of the pull's own do not wake the push at once, but it walks past them soon
    after: tombstone cleanup waits for every replication's up-checkpoint."""
    async with collection_pair(tmp_path, ID_TEXT_SCHEMA) as (fork, master):
        async with WirePipe(collection_handler(master)) as pipe:
            state = replicate(fork, pipe.handler, "pulled")
            await state.wait_for_in_sync()
            await master.bulk_insert(docs("bulk", 300))
            await master.remove({"id": {"$in": ["bulk-0001", "bulk-0002"]}})
            await wait_equal(fork, master, seconds=WAIT)
            checkpoints = Checkpoints(fork.database.storage, fork.name, "pulled")
            last = fork.database.storage.last_seq(fork.name)
            walked = asyncio.Event()  # the push's pass ends (PULLED_WALK_DELAY later)
            sub = state.active.subscribe(on_next=lambda busy: busy or walked.set())
            async with asyncio.timeout(WAIT):
                while checkpoints.up() != last:
                    walked.clear()
                    await walked.wait()
            sub.dispose()
            assert await fork.cleanup(min_age=0) == 2  # the pulled tombstones can go
            await state.cancel()
