"""The bulk lane of the push keeps several ``masterWrite`` batches in flight (upstream.py:
windows of ``PUSH_WINDOW`` batches, two windows at most), and stores each window's outcome
after the one before it, never after one that failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from replication_helpers import ID_TEXT_SCHEMA, HandlerWrapper, collection_pair, wait_equal

from p2pdb.errors import PeerError
from p2pdb.replication import WriteRow, collection_handler, replicate
from p2pdb.replication.checkpoints import Checkpoints
from p2pdb.replication.upstream import PUSH_WINDOW

WAIT = 20.0
BATCH = 50


def docs(n: int) -> list[dict[str, Any]]:
    return [{"id": f"d{i:05}", "text": "fork"} for i in range(n)]


class HoldingHandler(HandlerWrapper):
    """Holds every ``write`` until ``release`` is set; records how many were in flight."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.release = asyncio.Event()
        self.flying = 0
        self.most = 0
        self.arrived = asyncio.Condition()
        self.fail_first: bool = False

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        self.flying += 1
        self.most = max(self.most, self.flying)
        async with self.arrived:
            self.arrived.notify_all()
        try:
            await self.release.wait()
            if self.fail_first:
                self.fail_first = False
                # fail only once every other batch was answered, and give a wrong order of
                # stores a moment to show (the right one stores nothing meanwhile)
                async with asyncio.timeout(WAIT), self.arrived:
                    await self.arrived.wait_for(lambda: self.flying == 1)
                await asyncio.sleep(0.2)
                raise PeerError("injected: the first batch is lost", code="PEER_TIMEOUT")
            return await self.inner.write(rows)
        finally:
            self.flying -= 1
            async with self.arrived:
                self.arrived.notify_all()

    async def until_flying(self, count: int) -> None:
        async with asyncio.timeout(WAIT), self.arrived:
            await self.arrived.wait_for(lambda: self.flying >= count)


async def test_two_windows_of_batches_are_in_flight_at_once(tmp_path: Path) -> None:
    async with collection_pair(tmp_path, ID_TEXT_SCHEMA) as (fork, master):
        await fork.bulk_insert(docs(6 * PUSH_WINDOW * BATCH))
        handler = HoldingHandler(collection_handler(master))
        state = replicate(fork, handler, "windows", batch_size=BATCH)
        try:
            await handler.until_flying(2 * PUSH_WINDOW)  # the second window did not wait
            await asyncio.sleep(0)  # (nothing more may start while all are held)
            assert handler.flying == 2 * PUSH_WINDOW
            handler.release.set()
            await wait_equal(fork, master, seconds=WAIT)
            await state.wait_for_in_sync()
            assert handler.most == 2 * PUSH_WINDOW
            up = Checkpoints(fork.database.storage, fork.name, "windows").up()
            assert up == fork.database.storage.last_seq(fork.name)
        finally:
            await state.cancel()


async def test_a_failed_window_stores_nothing_after_it(tmp_path: Path) -> None:
    """The first batch of the first window fails after the second window was written on
    the master: the up-checkpoint stays where it was (the second window's outcome is not
    stored before the first's), and the retry pushes everything."""
    async with collection_pair(tmp_path, ID_TEXT_SCHEMA) as (fork, master):
        await fork.bulk_insert(docs(2 * PUSH_WINDOW * BATCH))
        handler = HoldingHandler(collection_handler(master))
        handler.fail_first = True
        errors: list[BaseException] = []
        failed = asyncio.Event()
        state = replicate(
            fork, handler, "windows", batch_size=BATCH, retry_delay=30.0, max_retry_delay=30.0
        )
        state.errors.subscribe(on_next=lambda e: (errors.append(e), failed.set()))
        try:
            await handler.until_flying(2 * PUSH_WINDOW)
            handler.release.set()
            await asyncio.wait_for(failed.wait(), WAIT)
            assert isinstance(errors[0], PeerError)
            # whatever the master wrote meanwhile, the fork stored no checkpoint past it
            assert Checkpoints(fork.database.storage, fork.name, "windows").up() == 0
            assert await master.count() < 2 * PUSH_WINDOW * BATCH
        finally:
            await state.cancel()
        again = replicate(fork, handler, "windows", batch_size=BATCH)
        try:
            await wait_equal(fork, master, seconds=WAIT)
            await again.wait_for_in_sync()
        finally:
            await again.cancel()
