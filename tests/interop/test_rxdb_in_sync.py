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
