"""The push's bulk lane sends up to ``WINDOW`` batches at once (as an RxDB fork does), and
a failure of one of them fails the whole pass: nothing of it is taken as stored."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import ID_TEXT_SCHEMA, HandlerWrapper, collection_pair, contents

import p2pdb
from p2pdb.errors import PeerError
from p2pdb.replication import WriteRow, collection_handler, replicate
from p2pdb.replication.upstream import WINDOW
from p2pdb.tasks import run_all

WAIT = 10.0


class HeldWrites(HandlerWrapper):
    """Holds every push until ``release`` is set; counts the pushes in flight."""

    def __init__(self, master: p2pdb.Collection) -> None:
        super().__init__(collection_handler(master))
        self.release = asyncio.Event()
        self.flying = 0
        self.most = 0
        self.sizes: list[int] = []
        self.changed = asyncio.Event()
        self.fail_once: set[int] = set()  # call numbers (from 1) that fail once

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        self.sizes.append(len(rows))
        number = len(self.sizes)
        self.flying += 1
        self.most = max(self.most, self.flying)
        self.changed.set()
        try:
            await self.release.wait()
            if number in self.fail_once:
                raise PeerError("injected failure", code="PEER_TIMEOUT")
            return await self.inner.write(rows)
        finally:
            self.flying -= 1

    async def until_flying(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.flying < count:
                self.changed.clear()
                await self.changed.wait()


def docs(count: int) -> list[dict[str, Any]]:
    return [{"id": f"d{i:05d}", "text": f"doc {i}"} for i in range(count)]


async def test_a_pass_sends_its_batches_at_once(tmp_path: Path) -> None:
    batch = 10
    async with collection_pair(tmp_path, ID_TEXT_SCHEMA) as (fork, master):
        await fork.bulk_insert(docs(batch * WINDOW + 5))
        handler = HeldWrites(master)
        state = replicate(fork, handler, "window", batch_size=batch, pull=False)
        try:
            # every batch of the first pass is in flight before any is answered
            await handler.until_flying(WINDOW)
            assert handler.sizes == [batch] * WINDOW
            handler.release.set()
            await asyncio.wait_for(state.wait_for_in_sync(), WAIT)
        finally:
            await state.cancel()
        assert handler.most == WINDOW and handler.sizes[WINDOW:] == [5]
        assert await contents(master) == await contents(fork)


async def test_a_failed_batch_fails_its_pass_which_is_pushed_again(tmp_path: Path) -> None:
    batch = 10
    async with collection_pair(tmp_path, ID_TEXT_SCHEMA) as (fork, master):
        await fork.bulk_insert(docs(batch * WINDOW))
        handler = HeldWrites(master)
        handler.fail_once = {3}
        errors: list[Exception] = []
        state = replicate(fork, handler, "window", batch_size=batch, pull=False, retry_delay=0.01)
        state.errors.subscribe(errors.append)
        try:
            await handler.until_flying(WINDOW)
            handler.release.set()
            await asyncio.wait_for(state.wait_for_in_sync(), WAIT)
        finally:
            await state.cancel()
        assert [getattr(e, "code", None) for e in errors] == ["PEER_TIMEOUT"]
        # the whole pass went again (its checkpoint had not moved), all of it at once
        assert handler.sizes == [batch] * (2 * WINDOW)
        assert await contents(master) == await contents(fork)


async def test_run_all_runs_nothing_and_raises_the_first_failure() -> None:
    await run_all([])  # nothing to run: returns
    ended: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(WAIT)
        finally:
            ended.append("slow")

    async def failing() -> None:
        raise PeerError("injected failure", code="PEER_TIMEOUT")

    with pytest.raises(PeerError) as caught:
        await run_all([slow(), failing()])
    assert caught.value.code == "PEER_TIMEOUT"
    assert ended == ["slow"]  # cancelled and waited for


async def test_run_all_cancelled_cancels_and_waits_for_every_task() -> None:
    started, ended = asyncio.Event(), []

    async def slow(name: str) -> None:
        started.set()
        try:
            await asyncio.sleep(WAIT)
        finally:
            ended.append(name)

    caller = asyncio.ensure_future(run_all([slow("a"), slow("b")]))
    await asyncio.wait_for(started.wait(), WAIT)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert sorted(ended) == ["a", "b"]
