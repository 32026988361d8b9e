"""Tombstone cleanup (``collection.cleanup()``, ``db.start_cleanup()``): real SQLite files, and
replication over the in-memory wire (``WirePipe``).

The rule under test: a tombstone is purged only when it is older than ``min_age`` and every
replication of the collection has pushed past it. ``test_ignoring_a_replication_resurrects``
shows what happens without the rule: the peer that still holds the document sends it back.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.cleanup import BackgroundCleanup, CleanupPolicy, CleanupReport, purge_tombstones
from p2pdb.errors import ValidationError
from p2pdb.replication import ReplicationState, collection_handler, replicate
from p2pdb.replication.testing import WirePipe

pytestmark = pytest.mark.timeout(60)


def integrity(path: str) -> None:
    """SQLite's own check of a (closed) file."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def past_last_write(collection: p2pdb.Collection) -> None:
    """Sleep until the clock passes the newest write time: a transaction of many writes
    stamps them 10 us apart, which can run ahead of the clock (documents.SeqClock)."""
    rows, _ = collection.storage.changes_since(collection.name, 0, 1_000_000)
    newest = max(state["_meta"]["lwt"] for _, state in rows) / 1000
    await asyncio.sleep(max(0.0, newest - time.time()) + 0.001)


async def stored_rows(collection: p2pdb.Collection) -> int:
    """Rows in the collection's table, tombstones included."""
    return len(collection.storage.changes_since(collection.name, 0, 1_000_000)[0])


async def test_min_age_is_respected(todos: p2pdb.Collection) -> None:
    await todos.bulk_insert([{"id": f"d{i}", "text": "x"} for i in range(5)])
    await todos.remove({"id": {"$in": ["d0", "d1", "d2"]}})
    assert await todos.cleanup(min_age=3600) == 0
    assert await todos.cleanup(min_age=timedelta(hours=1)) == 0
    assert await stored_rows(todos) == 5
    await past_last_write(todos)
    assert await todos.cleanup(min_age=0) == 3
    assert await stored_rows(todos) == 2  # the live documents stay
    assert todos.stored_state("d0") is None
    assert await todos.count() == 2
    assert await todos.cleanup(min_age=0) == 0  # nothing left to purge


async def test_bad_min_age_and_policy_are_refused(todos: p2pdb.Collection) -> None:
    for bad in (-1, float("nan"), "1d", True):
        with pytest.raises(ValidationError) as caught:
            await todos.cleanup(min_age=bad)  # type: ignore[arg-type]
        assert caught.value.code == "CLEANUP_BAD_DURATION"
    with pytest.raises(ValidationError) as caught:
        CleanupPolicy(batch_size=0)
    assert caught.value.code == "CLEANUP_BAD_BATCH_SIZE"
    with pytest.raises(ValidationError) as caught:
        CleanupPolicy(interval=timedelta(seconds=-1))
    assert caught.value.code == "CLEANUP_BAD_DURATION"


async def test_small_batches_purge_everything_and_keep_the_rest(todos: p2pdb.Collection) -> None:
    await todos.bulk_insert([{"id": f"d{i:03}", "text": "x"} for i in range(100)])
    await todos.remove({"id": {"$lt": "d050"}})
    await past_last_write(todos)
    purged = await purge_tombstones(todos, 0, batch_size=7)
    assert purged == 50
    assert await todos.count() == 50
    assert await stored_rows(todos) == 50


async def test_a_purged_id_can_be_inserted_again_as_new(db_path: str) -> None:
    async with p2pdb.create_database(db_path) as db:
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        first = await todos.insert({"id": "a", "text": "one"})
        await first.patch({"text": "two"})
        await todos.remove_document("a")
        assert todos.stored_state("a")["_rev"].startswith("3-")  # type: ignore[index]
        seq_before = db.storage.current_seq()
        assert await todos.cleanup(min_age=0) == 1
        events: list[p2pdb.ChangeEvent] = []
        todos.changes.subscribe(events.append)
        again = await todos.insert({"id": "a", "text": "new"})
        assert again.revision.startswith("1-")  # a new document, as in RxDB
        assert events[-1].operation == "INSERT" and events[-1].previous is None
        assert events[-1].seq == seq_before + 1  # the sequence never goes back
        assert (await todos.find_one("a"))["text"] == "new"  # type: ignore[index]
    integrity(db_path)


async def test_background_cleanup_runs_and_stops_on_close(db_path: str) -> None:
    db = await p2pdb.create_database(db_path)
    todos = await db.add_collection("todos", schema=TODO_SCHEMA)
    await todos.bulk_insert([{"id": f"d{i}", "text": "x"} for i in range(10)])
    await todos.remove({"id": {"$in": ["d1", "d2"]}})
    await past_last_write(todos)
    policy = CleanupPolicy(min_age=0, interval=0.01, first_run_after=0, batch_size=3)
    cleanup = await db.start_cleanup(policy)
    assert isinstance(cleanup, BackgroundCleanup)
    reports: list[CleanupReport] = []
    purged = asyncio.Event()
    completed = asyncio.Event()

    def on_report(report: CleanupReport) -> None:
        reports.append(report)
        if report.purged.get("todos"):
            purged.set()

    cleanup.reports.subscribe(on_next=on_report, on_completed=completed.set)
    await asyncio.wait_for(purged.wait(), 10)
    assert todos.stored_state("d1") is None and todos.stored_state("d2") is None
    await db.close()  # stops the cleanup first (close_with), then the file
    assert completed.is_set()
    count = len(reports)
    await asyncio.sleep(0.05)  # bounded: no report may come after close
    assert len(reports) == count
    await cleanup.close()  # twice is fine
    integrity(db_path)


# -- with replication -------------------------------------------------------------------------


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[p2pdb.Collection, p2pdb.Collection]]:
    """A master and a fork collection, each in its own file."""
    master_db = await p2pdb.create_database(str(tmp_path / "master.db"))
    fork_db = await p2pdb.create_database(str(tmp_path / "fork.db"))
    master = await master_db.add_collection("todos", schema=TODO_SCHEMA)
    fork = await fork_db.add_collection("todos", schema=TODO_SCHEMA)
    yield master, fork
    await fork_db.close()
    await master_db.close()
    integrity(str(tmp_path / "master.db"))
    integrity(str(tmp_path / "fork.db"))


async def until(collection: p2pdb.Collection, condition: Callable[[], bool]) -> None:
    """Wait (10 s at most) until ``condition()`` holds, checked after each commit."""
    changed = asyncio.Event()
    subscription = collection.changes.subscribe(lambda _event: changed.set())
    try:
        async with asyncio.timeout(10):
            while not condition():
                changed.clear()
                await changed.wait()
    finally:
        subscription.dispose()


def removed(collection: p2pdb.Collection, doc_id: str) -> Callable[[], bool]:
    """True once ``doc_id`` is stored as a tombstone."""
    return lambda: (collection.stored_state(doc_id) or {}).get("_deleted") is True


async def synced(state: ReplicationState) -> None:
    """Wait until nothing is left to pull or push right now."""
    await asyncio.wait_for(state.wait_for_in_sync(), 20)


async def caught_up(state: ReplicationState) -> None:
    """Wait until the fork pulled everything the master holds now (a master's write may
    still be on its way through the pipe, so pull from the checkpoint first)."""
    await state.re_sync()
    await synced(state)


async def removed_while_paused(
    master: p2pdb.Collection, fork: p2pdb.Collection, pipe: WirePipe
) -> ReplicationState:
    """Both hold "a"; the fork removes it while its replication is paused (not pushed)."""
    state = replicate(fork, pipe.handler, "main", retry_delay=0.05)
    await master.insert({"id": "a", "text": "shared"})
    await caught_up(state)
    assert (await fork.find_one("a")) is not None
    await state.pause()
    await fork.remove_document("a")
    return state


async def test_tombstone_not_pushed_is_kept_until_pushed(
    pair: tuple[p2pdb.Collection, p2pdb.Collection],
) -> None:
    master, fork = pair
    async with WirePipe(collection_handler(master)) as pipe:
        state = await removed_while_paused(master, fork, pipe)
        assert await fork.cleanup(min_age=0) == 0  # the master has not seen the deletion
        assert fork.stored_state("a")["_deleted"] is True  # type: ignore[index]
        await state.start()
        await synced(state)
        assert master.stored_state("a")["_deleted"] is True  # type: ignore[index]
        assert await fork.cleanup(min_age=0) == 1  # pushed: now it may go
        assert fork.stored_state("a") is None
        # the master edits nothing, and nothing comes back, even after a resync
        await caught_up(state)
        assert fork.stored_state("a") is None
        # a purged id inserted again replicates as a new document
        await fork.insert({"id": "a", "text": "again"})
        await synced(state)
        assert (await master.find_one("a"))["text"] == "again"  # type: ignore[index]
        await state.cancel()


async def test_ignoring_a_replication_resurrects(
    pair: tuple[p2pdb.Collection, p2pdb.Collection],
) -> None:
    """Without the rule (ignore the replication's checkpoint), the fork purges a deletion
    the master never got; the master still holds the document, edits it, and it comes back."""
    master, fork = pair
    async with WirePipe(collection_handler(master)) as pipe:
        state = await removed_while_paused(master, fork, pipe)
        assert await purge_tombstones(fork, 0, ignore_replications={"main"}) == 1
        await state.start()
        await synced(state)
        assert (await master.find_one("a")) is not None  # the deletion never reached it
        doc = await master.find_one("a")
        await doc.patch({"text": "edited on the master"})  # type: ignore[union-attr]
        await caught_up(state)
        back = await fork.find_one("a")
        assert back is not None and back["text"] == "edited on the master"  # resurrected
        await state.cancel()


async def test_with_the_rule_the_deletion_wins(
    pair: tuple[p2pdb.Collection, p2pdb.Collection],
) -> None:
    """The same story with the rule: the deletion reaches the master before the purge, and
    the master's later attempt to edit the document finds it removed."""
    master, fork = pair
    async with WirePipe(collection_handler(master)) as pipe:
        state = await removed_while_paused(master, fork, pipe)
        assert await fork.cleanup(min_age=0) == 0
        await state.start()
        await synced(state)
        assert await fork.cleanup(min_age=0) == 1
        assert await master.find_one("a") is None  # removed on the master too
        with pytest.raises(p2pdb.NotFoundError):
            await master.remove_document("a")
        await caught_up(state)
        assert fork.stored_state("a") is None and await fork.find_one("a") is None
        await state.cancel()


async def test_a_pulled_tombstone_waits_for_every_other_replication(tmp_path: Path) -> None:
    """Multi-hop: the hub forks two masters. A deletion pulled from one must reach the
    other before the hub may purge it, or the other master keeps the document forever."""
    dbs = [await p2pdb.create_database(str(tmp_path / f"{n}.db")) for n in ("m1", "m2", "hub")]
    m1, m2, hub = [await db.add_collection("todos", schema=TODO_SCHEMA) for db in dbs]
    async with WirePipe(collection_handler(m1)) as p1, WirePipe(collection_handler(m2)) as p2:
        one = replicate(hub, p1.handler, "one", retry_delay=0.05)
        two = replicate(hub, p2.handler, "two", retry_delay=0.05)
        await m1.insert({"id": "x", "text": "everywhere"})
        await caught_up(one)
        await synced(two)
        assert await m2.find_one("x") is not None  # forwarded by the hub
        await two.pause()
        await m1.remove_document("x")
        await until(hub, removed(hub, "x"))
        await synced(one)
        assert await hub.cleanup(min_age=0) == 0  # "two" has not forwarded it
        await two.start()
        await until(m2, removed(m2, "x"))
        await synced(two)
        assert await hub.cleanup(min_age=0) == 1
        await one.cancel()
        await two.cancel()
    for db in dbs:
        await db.close()
        integrity(db.path)


async def test_a_replication_that_never_pushed_holds_cleanup_back(
    pair: tuple[p2pdb.Collection, p2pdb.Collection],
) -> None:
    """A pull-only replication stores no up-checkpoint: it counts as 0 (conservative) until
    it is listed in ``ignore_replications``."""
    master, fork = pair
    async with WirePipe(collection_handler(master)) as pipe:
        state = replicate(fork, pipe.handler, "pull-only", push=False, retry_delay=0.05)
        await master.insert({"id": "a", "text": "x"})
        await caught_up(state)
        await fork.insert({"id": "b", "text": "local"})
        await fork.remove_document("b")
        assert fork.storage.up_checkpoints("todos") == {"pull-only": None}
        assert await fork.cleanup(min_age=0) == 0
        policy = CleanupPolicy(min_age=0, ignore_replications=frozenset({"pull-only"}))
        report = await BackgroundCleanup(fork.database, policy).run_once()  # type: ignore[arg-type]
        assert report.purged == {"todos": 1}
        await state.cancel()


async def test_a_deletion_the_master_never_got_is_kept_even_past_the_checkpoint(
    pair: tuple[p2pdb.Collection, p2pdb.Collection],
) -> None:
    """``push_modifier`` returning ``None`` leaves a deletion unsent while the up-checkpoint
    moves past it: the master keeps the live document (its assumed state here), so the
    tombstone must stay, or the master's next edit would bring the document back."""
    master, fork = pair

    def keep_deletions_local(doc: dict[str, object]) -> dict[str, object] | None:
        return None if doc["_deleted"] else doc

    async with WirePipe(collection_handler(master)) as pipe:
        state = replicate(
            fork, pipe.handler, "main", retry_delay=0.05, push_modifier=keep_deletions_local
        )
        await master.insert({"id": "a", "text": "shared"})
        await caught_up(state)
        await fork.remove_document("a")
        await fork.insert({"id": "b", "text": "later"})  # the checkpoint moves past "a"
        await synced(state)
        assert await master.find_one("b") is not None
        assert await master.find_one("a") is not None  # the deletion was not sent
        tombstone_seq = fork.storage.changes_since("todos", 0, 100)[0][-2][0]
        assert fork.storage.up_checkpoints("todos")["main"] >= tombstone_seq  # type: ignore[operator]
        assert await fork.cleanup(min_age=0) == 0  # the assumed master state is live
        doc = await master.find_one("a")
        await doc.patch({"text": "edited on the master"})  # type: ignore[union-attr]
        await caught_up(state)
        assert await fork.find_one("a") is None  # still removed here: nothing came back
        await state.cancel()


async def test_encrypted_collection_with_a_replication(tmp_path: Path) -> None:
    """Assumed master states are stored encoded by the collection's codec; ``_deleted``
    stays readable, so the rule works on encrypted collections too."""
    schema = {**TODO_SCHEMA, "encrypted": ["text"]}
    fork_db = await p2pdb.create_database(str(tmp_path / "fork.db"), password="correct horse")
    master_db = await p2pdb.create_database(str(tmp_path / "master.db"), password="battery staple")
    fork = await fork_db.add_collection("todos", schema=schema)
    master = await master_db.add_collection("todos", schema=schema)
    async with WirePipe(collection_handler(master)) as pipe:
        state = replicate(fork, pipe.handler, "main", retry_delay=0.05)
        await fork.insert({"id": "s", "text": "secret"})
        await synced(state)
        await state.pause()
        await fork.remove_document("s")
        assert await fork.cleanup(min_age=0) == 0
        await state.start()
        await synced(state)
        assert master.stored_state("s")["_deleted"] is True  # type: ignore[index]
        assert await fork.cleanup(min_age=0) == 1
        await state.cancel()
    for db in (fork_db, master_db):
        await db.close()
        integrity(db.path)


async def test_a_failing_collection_is_reported_and_the_others_are_cleaned(
    db: p2pdb.Database, todos: p2pdb.Collection
) -> None:
    class Broken:
        name = "broken"

        @property
        def storage(self) -> p2pdb.storage.Storage:
            raise RuntimeError("disk on fire")

        def check_open(self) -> None:
            pass

    class Both:
        collections = {"broken": Broken(), "todos": todos}

        def close_with(self, closer: object) -> object:
            return db.close_with(closer)  # type: ignore[arg-type]

    await todos.insert({"id": "a", "text": "x"})
    await todos.remove_document("a")
    cleanup = BackgroundCleanup(Both(), CleanupPolicy(min_age=0))  # type: ignore[arg-type]
    errors: list[p2pdb.P2PDBError] = []
    cleanup.errors.subscribe(errors.append)
    report = await cleanup.run_once()
    assert report.purged == {"todos": 1}
    assert [e.code for e in errors] == ["CLEANUP_FAILED"]
    assert isinstance(errors[0].__cause__, RuntimeError)
