"""Small writes run on the event loop when the writer thread is idle (storage/connection.py).

What must hold either way: a small write's events are emitted before its ``await`` returns
and in commit order with every other write; it never runs beside a write queued or running
on the thread; it never waits on the event loop for another process's write lock; and it
never checkpoints the WAL there, yet the WAL stays bounded.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from typing import Any

import pytest
from schemas import PEER_SCHEMA

import p2pdb
from p2pdb.errors import ValidationError
from p2pdb.storage import SMALL_WRITE_ROWS, WriteTxn
from p2pdb.storage.connection import INLINE_RUN


@pytest.fixture
async def docs(db: p2pdb.Database) -> p2pdb.Collection:
    return await db.add_collection("docs", schema=PEER_SCHEMA)


def thread_of_writes(collection: p2pdb.Collection) -> list[int]:
    """Record the thread each following write transaction runs on."""
    threads: list[int] = []
    collection.database.storage.write_checks.append(
        lambda txn: threads.append(threading.get_ident())
    )
    return threads


async def test_a_small_write_runs_on_the_loop_and_its_event_comes_first(docs: Any) -> None:
    threads = thread_of_writes(docs)
    seen: list[str] = []
    docs.changes.subscribe(lambda event: seen.append(event.id))
    await docs.insert({"id": "one", "text": ""})
    assert seen == ["one"]  # before the await returned
    assert threads == [threading.get_ident()]
    await docs.bulk_insert([{"id": f"b{i}", "text": ""} for i in range(SMALL_WRITE_ROWS + 1)])
    assert threads[1] != threading.get_ident()  # a larger write goes to the writer thread
    assert seen[-1] == f"b{SMALL_WRITE_ROWS}"


async def test_a_small_write_waits_behind_a_write_on_the_thread(docs: Any) -> None:
    storage = docs.database.storage
    entered, release = threading.Event(), threading.Event()

    def held(txn: WriteTxn) -> None:
        entered.set()
        release.wait(10)
        txn.put("docs", [], "test")

    holder = asyncio.ensure_future(storage.write(held))
    await asyncio.to_thread(entered.wait, 10)
    order: list[str] = []
    docs.changes.subscribe(lambda event: order.append(event.id))
    big = asyncio.ensure_future(
        docs.bulk_insert([{"id": f"big{i}", "text": ""} for i in range(20)])
    )
    small = asyncio.ensure_future(docs.insert({"id": "small", "text": ""}))
    done, _ = await asyncio.wait({small}, timeout=0.2)
    assert not done  # not on the loop beside the thread's transaction: queued behind it
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, big, small), 10)
    assert order == [*(f"big{i}" for i in range(20)), "small"]  # commit order, events too
    pairs, _ = storage.changes_since("docs", 0, 100)
    assert [state["id"] for _, state in pairs][-1] == "small"


async def test_another_processes_write_lock_never_blocks_the_loop(docs: Any) -> None:
    other = sqlite3.connect(docs.database.storage.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.ensure_future(ticker())
        insert = asyncio.ensure_future(docs.insert({"id": "later", "text": ""}))
        started = time.monotonic()
        done, _ = await asyncio.wait({insert}, timeout=0.3)
        assert not done  # it waits on the thread for the lock...
        assert ticks >= 10  # ...while the loop goes on
        other.execute("COMMIT")
        await asyncio.wait_for(insert, 10)
        assert time.monotonic() - started < 10
        assert (await docs.find_one("later")) is not None
        stop.set()
        await ticking
    finally:
        other.close()


async def test_a_failing_small_write_stores_nothing(docs: Any) -> None:
    await docs.insert({"id": "kept", "n": 1, "text": ""})

    def fails(txn: WriteTxn) -> None:
        txn.put("docs", [], "test")
        raise ValidationError("refused", code="TEST_REFUSED")

    with pytest.raises(ValidationError):
        await docs.database.storage.write(fails, small=True)
    await docs.insert({"id": "after", "text": ""})
    assert {d.id for d in await docs.find()} == {"kept", "after"}


async def test_small_writes_leave_checkpoints_to_the_thread(docs: Any) -> None:
    threads = thread_of_writes(docs)
    wal = docs.database.storage.path + "-wal"
    for i in range(4000):  # a page or more a document: 4,000 pages at least in all
        await docs.insert({"id": f"d{i}", "n": i, "text": "x" * 3000})
    loop_thread = threading.get_ident()
    on_thread = [i for i, t in enumerate(threads) if t != loop_thread]
    assert len(on_thread) == 4000 // (INLINE_RUN + 1)  # every (INLINE_RUN + 1)-th
    size = await asyncio.to_thread(os.path.getsize, wal)
    assert size < 3000 * 4096  # SQLite's checkpoints ran (on the thread)


async def test_a_failing_listener_fails_no_small_write(docs: Any) -> None:
    loop = asyncio.get_running_loop()
    reported: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
    try:

        def fails(_events: Any) -> None:
            raise RuntimeError("a listener's bug")

        docs.database.storage.on_commit = fails  # as a commit callback from the thread would
        stored = await docs.insert({"id": "kept", "text": ""})  # committed: the write does not fail
        assert stored.id == "kept"
        assert [str(e) for e in reported] == ["a listener's bug"]
        assert docs.database.storage.get_one("docs", "kept") is not None
    finally:
        loop.set_exception_handler(None)
