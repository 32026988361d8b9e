"""``pool.wait_for_in_sync()`` of a p2pdb master whose fork is a real RxDB 17.6 peer.

RxDB's downstream drains its queued tasks in one go and drops a ``RESYNC`` that follows
stream events in the same drain (``addNewTask`` in its ``downstream.ts`` shifts it out and
breaks without running it), so a master's single ``RESYNC`` after a pushed bulk (whose
states it streams back) can go unanswered: the master asks again until the fork answers."""

from __future__ import annotations

import asyncio

from rxdb_harness import Stack, wait_for
from test_rxdb_pairs import connect_pair, todo


async def test_master_waits_for_an_rxdb_fork_after_its_bulk_push(stack: Stack) -> None:
    py, rx = await connect_pair(stack, "p2pdb", p2pdb_master=True, p2pdb_initiator=True)
    pool = py.pool
    assert pool is not None
    for round_number in range(3):
        docs = [todo(f"rx-{round_number}-{i}", "pushed by RxDB", i) for i in range(1000)]
        assert await rx.call("bulkInsert", docs=docs) == len(docs)
        pushed = 2 + round_number * 1000 + 100

        async def some_arrived(at_least: int = pushed) -> bool:
            return int(await py.collection.count()) >= at_least

        await wait_for(py.collection, some_arrived, 60, f"count >= {pushed}")
        # RxDB is still pushing: our RESYNC queues behind the stream events it delays
        await asyncio.wait_for(pool.wait_for_in_sync(peers=1), 30)
        assert await py.collection.count() == 2 + 1000 * (round_number + 1)


async def test_an_rxdb_forks_push_burst_is_taken_whole(stack: Stack) -> None:
    """RxDB sends every push batch of one local write at once (``persistToMaster`` awaits
    them together): a bulk insert of 4,000 documents is 200 ``masterWrite``s of 20 in one
    burst. The master serves them one at a time (bulk writes take turns) and keeps the peer
    (before session 8 the 64-request queue bound dropped it, and its push restarted from its
    checkpoint)."""
    py, rx = await connect_pair(stack, "p2pdb", p2pdb_master=True, p2pdb_initiator=True)
    pool = py.pool
    assert pool is not None
    (session,) = await py.wait_peers(1)
    docs = [todo(f"burst-{i}", "pushed by RxDB in one burst", i) for i in range(4000)]
    assert await rx.call("bulkInsert", docs=docs) == len(docs)

    async def all_arrived() -> bool:
        return int(await py.collection.count()) == 2 + len(docs)

    await wait_for(py.collection, all_arrived, 60, "every pushed document stored")
    await asyncio.wait_for(pool.wait_for_in_sync(peers=1), 30)
    assert py.errors == [] and rx.errors() == []
    assert list(pool.sessions.values()) == [session]  # the same link throughout
