"""A replication killed with SIGKILL at random moments resumes from its checkpoints: it
neither skips a change nor starts over, and the checkpoint never runs ahead of the data."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from replication_helpers import FaultyHandler, contents, wait_equal
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.replication import collection_handler, replicate

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    import p2pdb
    from p2pdb.replication import collection_handler, replicate
    from schemas import TODO_SCHEMA

    async def main():
        master_db = await p2pdb.create_database({master!r})
        fork_db = await p2pdb.create_database({fork!r})
        master = await master_db.add_collection("todos", schema=TODO_SCHEMA)
        fork = await fork_db.add_collection("todos", schema=TODO_SCHEMA)
        state = replicate(fork, collection_handler(master), "crashy", batch_size=7)
        print("started", flush=True)
        await state.wait_for_initial_replication()
        print("synced", flush=True)
        i = 0
        while True:  # keep both sides writing until killed
            i += 1
            await fork.insert({{"id": f"f-{{i}}", "text": "fork"}})
            await master.insert({{"id": f"m-{{i}}", "text": "master"}})

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_killed_replication_resumes(tmp_path: Path) -> None:
    master_path, fork_path = str(tmp_path / "master.db"), str(tmp_path / "fork.db")
    async with p2pdb.create_database(master_path) as db:
        master = await db.add_collection("todos", schema=TODO_SCHEMA)
        await master.bulk_insert([{"id": f"seed-{i}", "text": "x"} for i in range(500)])
    code = CHILD.format(tests=str(Path(__file__).parent), master=master_path, fork=fork_path)
    rng = random.Random(5)
    # kill it during the first full pass, then twice while it replicates live
    for wait_for in (b"started\n", b"synced\n", b"synced\n"):
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
        )
        assert child.stdout is not None
        async with asyncio.timeout(30):
            while await child.stdout.readline() != wait_for:
                pass
        await asyncio.sleep(rng.uniform(0.01, 0.3))  # a random moment, not a wait for state
        child.send_signal(signal.SIGKILL)
        await child.wait()

    async with p2pdb.create_database(master_path) as mdb, p2pdb.create_database(fork_path) as fdb:
        master = await mdb.add_collection("todos", schema=TODO_SCHEMA)
        fork = await fdb.add_collection("todos", schema=TODO_SCHEMA)
        # the stored checkpoint never runs ahead of the documents it covers
        down = fdb.storage.get_checkpoint("todos", "crashy", "down")
        if down is not None:
            pulled, _ = mdb.storage.changes_since("todos", 0, 100_000)
            covered = {s["id"] for seq, s in pulled if seq <= down["seq"]}
            assert covered <= set(await contents(fork)), "checkpoint ahead of the data"
        total = await master.count() + await fork.count()
        handler = FaultyHandler(collection_handler(master))
        async with replicate(fork, handler, "crashy", batch_size=7) as state:
            await state.wait_for_in_sync()
        await wait_equal(master, fork)
        # resumed: far fewer documents moved than a fresh start would move
        assert handler.pulled + handler.pushed < total
