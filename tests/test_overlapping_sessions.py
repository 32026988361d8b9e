"""Two replications with the same id at once: the old one's late pull must not undo a push
the new one made.

When a peer's link is replaced (a signaling reconnect, a link found dead), the WebRTC pool
starts the new session's replication while the old session is still closing: for up to a
second both :class:`~p2pdb.replication.ReplicationState` objects of the same replication id
run on the same fork. Each has its own stale-state bookkeeping (``Arrivals``), so a pull
answer the old one received *before* the new one's push was answered is not recognised as
possibly stale: the old one applies the master's older state over the fork's newer, pushed
one (its assumed master state already says "pushed"), and the fork is rolled back with the
replication's origin. In a mesh that state then travels to the other peers as a new write,
over the newer one, without meeting a conflict handler (the lww "second path" of
docs/reliability.md: seed 410's ``p2`` held an older state while assuming the tombstone).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from replication_helpers import ID_W_SCHEMA, HandlerWrapper, collection_pair

import p2pdb
from p2pdb.replication import (
    ChangesBatch,
    ReplicationHandler,
    collection_handler,
    replicate,
)

SCHEMA = ID_W_SCHEMA
WAIT = 10.0


class LateAnswer(HandlerWrapper):
    """A master whose next pull is read now (from the start) but answered only when
    ``release`` is set: an answer that was on its way over the old link."""

    def __init__(self, inner: ReplicationHandler) -> None:
        super().__init__(inner)
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        answer = await self.inner.changes_since(None, batch_size)
        self.asked.set()
        await self.release.wait()
        return answer


async def state_of(collection: p2pdb.Collection, doc_id: str) -> dict[str, Any] | None:
    doc = await collection.find_one(doc_id)
    return None if doc is None else doc.to_dict()


async def test_an_old_sessions_late_pull_does_not_undo_the_new_sessions_push(
    tmp_path: Path,
) -> None:
    async with collection_pair(tmp_path, SCHEMA) as (fork, master):
        await master.insert({"id": "x", "w": 1})
        async with replicate(fork, collection_handler(master), "r", live=False) as first:
            async with asyncio.timeout(WAIT):
                await first.wait_for_initial_replication()
        doc = await fork.find_one("x")
        assert doc is not None
        await doc.patch({"w": 2})  # the fork's own write, not pushed yet

        late = LateAnswer(collection_handler(master))
        old = replicate(fork, late, "r", push=False)  # the old session: its pull is slow
        async with asyncio.timeout(WAIT):
            await late.asked.wait()  # it read the master's x = 1
        async with replicate(fork, collection_handler(master), "r", live=False) as new:
            async with asyncio.timeout(WAIT):
                await new.wait_for_initial_replication()  # pushed x = 2, accepted
        assert await state_of(master, "x") == {"id": "x", "w": 2}

        late.release.set()  # the old session's answer arrives, then it is closed
        async with asyncio.timeout(WAIT):
            await old.wait_for_initial_replication()
        await old.cancel()
        assert await state_of(fork, "x") == {"id": "x", "w": 2}, "the fork was rolled back"
        assert await state_of(master, "x") == {"id": "x", "w": 2}
