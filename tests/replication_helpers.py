"""Helpers for replication tests: a handler wrapper that counts calls and injects faults."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from reactivex import Observable

import p2pdb
from p2pdb.errors import PeerError
from p2pdb.replication import ChangesBatch, ReplicationHandler, Resync, WriteRow


class FaultyHandler:
    """Wraps a handler: counts calls, and fails or delays them on demand."""

    def __init__(self, inner: ReplicationHandler) -> None:
        self.inner = inner
        self.failing = False
        self.delay = 0.0
        self.pulled = 0  # documents handed out by changes_since
        self.pushed = 0  # rows received by write
        self.calls = 0

    async def _gate(self) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            raise PeerError("injected failure", code="PEER_TIMEOUT")

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        await self._gate()
        batch = await self.inner.changes_since(checkpoint, batch_size)
        self.pulled += len(batch.documents)
        return batch

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        await self._gate()
        self.pushed += len(rows)
        return await self.inner.write(rows)

    def stream(self) -> Observable[ChangesBatch | Resync]:
        return self.inner.stream()


async def contents(collection: p2pdb.Collection) -> dict[str, dict[str, Any]]:
    """Every live document's user fields, by id."""
    return {d.id: d.to_dict() for d in await collection.find()}


async def wait_equal(*collections: p2pdb.Collection, seconds: float = 10.0) -> None:
    """Wait until all collections hold the same documents (checked after each commit)."""
    changed = asyncio.Event()
    subs = [c.changes.subscribe(lambda _e: changed.set()) for c in collections]
    try:
        async with asyncio.timeout(seconds):
            while True:
                changed.clear()
                states = [await contents(c) for c in collections]
                if all(s == states[0] for s in states):
                    return
                await changed.wait()
    finally:
        for sub in subs:
            sub.dispose()
