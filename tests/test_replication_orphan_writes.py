"""A direction paused or canceled while its write waits for the writer thread: the write
commits before ``pause()``/``cancel()`` returns, never after (an orphaned write would commit
behind the persist lock's back, under the states a restarted direction already read)."""

from __future__ import annotations

import asyncio
import threading

from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.replication import collection_handler, replicate
from p2pdb.storage import WriteTxn


async def test_nothing_of_a_paused_replication_commits_after_pause_returns(db_path: str) -> None:
    async with (
        p2pdb.create_database(db_path) as fork_db,
        p2pdb.create_database(":memory:") as master_db,
    ):
        fork = await fork_db.add_collection("todos", schema=TODO_SCHEMA)
        master = await master_db.add_collection("todos", schema=TODO_SCHEMA)
        await master.insert({"id": "a", "text": "from master"})
        storage = fork_db.storage
        release = threading.Event()
        blocked = asyncio.Event()

        def hold(txn: WriteTxn) -> None:  # keeps the writer thread busy
            loop.call_soon_threadsafe(blocked.set)
            release.wait(30)

        loop = asyncio.get_running_loop()
        holder = asyncio.ensure_future(storage.write(hold))
        await asyncio.wait_for(blocked.wait(), 10)
        queued = asyncio.Event()
        real_write = storage.write

        async def write(fn, **options):  # type: ignore[no-untyped-def]
            queued.set()  # the pull's write, now waiting behind hold()
            return await real_write(fn, **options)

        storage.write = write  # type: ignore[method-assign]
        try:
            state = replicate(fork, collection_handler(master), "peer", push=False, autostart=False)
            received: list[str] = []
            state.received.subscribe(lambda doc: received.append(doc["id"]))
            await state.start()
            await asyncio.wait_for(queued.wait(), 10)
            storage.write = real_write  # type: ignore[method-assign]
            pausing = asyncio.ensure_future(state.pause())
            done, _ = await asyncio.wait({pausing}, timeout=0.3)
            assert not done  # pause() waits for the queued write
            release.set()
            await asyncio.wait_for(pausing, 10)
            seen = storage.get_checkpoint("todos", "peer", "down")
            assert seen is not None and storage.get_one("todos", "a") is not None
            assert received == ["a"]  # the committed write is reported, cancelled or not
            await holder
            await storage.write(lambda txn: None)  # everything queued before has committed
            assert storage.get_checkpoint("todos", "peer", "down") == seen
            await state.cancel()
        finally:
            release.set()  # never leave the writer thread held when an assertion fails
