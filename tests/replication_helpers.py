"""Helpers for replication tests: handler wrappers (one that passes every call on, one that
counts calls and injects faults), a fork/master pair of collections, and waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from reactivex import Observable

import p2pdb
from p2pdb.errors import PeerError
from p2pdb.replication import ChangesBatch, ReplicationHandler, Resync, WriteRow

#: Documents of an id and one integer: what the fixed-order replication tests write.
ID_W_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {"id": {"type": "string", "maxLength": 40}, "w": {"type": "integer"}},
    "required": ["id", "w"],
}

#: Documents of an id and a text.
ID_TEXT_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {"id": {"type": "string", "maxLength": 40}, "text": {"type": "string"}},
    "required": ["id", "text"],
}


class HandlerWrapper:
    """A replication handler that passes every call to ``inner``: a test subclasses it and
    overrides the call it watches, holds or answers differently."""

    def __init__(self, inner: ReplicationHandler) -> None:
        self.inner = inner

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        return await self.inner.changes_since(checkpoint, batch_size)

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        return await self.inner.write(rows)

    def stream(self) -> Observable[ChangesBatch | Resync]:
        return self.inner.stream()


@asynccontextmanager
async def collection_pair(
    folder: Path, schema: dict[str, Any]
) -> AsyncIterator[tuple[p2pdb.Collection, p2pdb.Collection]]:
    """``(fork, master)``: collection "docs" of ``schema`` in two database files."""
    fork_db = await p2pdb.create_database(str(folder / "fork.db"))
    master_db = await p2pdb.create_database(str(folder / "master.db"))
    try:
        fork = await fork_db.add_collection("docs", schema=schema)
        master = await master_db.add_collection("docs", schema=schema)
        yield fork, master
    finally:
        await fork_db.close()
        await master_db.close()


class FaultyHandler(HandlerWrapper):
    """Wraps a handler: counts calls, and fails or delays them on demand."""

    def __init__(self, inner: ReplicationHandler) -> None:
        super().__init__(inner)
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
