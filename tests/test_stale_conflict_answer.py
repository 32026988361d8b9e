"""A conflict answer older than a master state that arrived while the push was in flight is
asked again, never resolved.

RxDB's master (``rxStorageInstanceToReplicationHandler.masterWrite``) reads the states it
answers with, then writes, unserialized with its other writes: in a three-peer mesh
(tests/webrtc/test_native_rxdb.py) it answered one fork's push with the old state 50 ms
after it had streamed another fork's newer state. Had that newer state reached the fork
before the answer, the fork would have taken the old state for the master's current one,
and its ``master_wins`` handler would have written it back as a new revision, which its
other replications push on to every peer. ``ReadThenAnswer`` below is that master, with
the newer state streamed before the answer, deterministically.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import ID_W_SCHEMA, HandlerWrapper, collection_pair

import p2pdb
from p2pdb.replication import (
    ReplicationHandler,
    WriteRow,
    collection_handler,
    replicate,
)
from p2pdb.replication.testing import WirePipe

SCHEMA = ID_W_SCHEMA
WAIT = 10.0


async def wire_state(collection: p2pdb.Collection, doc_id: str) -> dict[str, Any] | None:
    doc = await collection.find_one(doc_id)
    return None if doc is None else {**doc.to_dict(), "_deleted": False}


class ReadThenAnswer(HandlerWrapper):
    """A master that answers as RxDB's ``masterWrite`` does: it reads the current states
    first; meanwhile (once) another peer's write of ``other`` lands and is streamed; then
    it answers every row it did not write with the state it read."""

    def __init__(self, collection: p2pdb.Collection, other: dict[str, Any]) -> None:
        self.collection = collection
        self.inner: ReplicationHandler = collection_handler(collection)
        self.other: dict[str, Any] | None = other
        self.answers: list[list[dict[str, Any]]] = []

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        read = [await wire_state(self.collection, row.new_document_state["id"]) for row in rows]
        if self.other is not None:
            other, self.other = self.other, None
            await self.collection.upsert(other)  # its stream event goes out now
        conflicts: list[dict[str, Any]] = []
        for row, current in zip(rows, read, strict=True):
            assumed = row.assumed_master_state
            if current is None or (assumed is not None and assumed == current):
                conflicts += await self.inner.write([row])
            else:
                conflicts.append(current)
        self.answers.append(conflicts)
        return conflicts


@pytest.mark.parametrize(
    ("other", "final"),
    [
        # the other fork pushed the same state: the master holds ours, nothing to resolve
        ({"id": "x", "w": 2}, 2),
        # the other fork wrote a third state: a real conflict, resolved with that state
        # (master wins), never with the state the first answer read before it
        ({"id": "x", "w": 3}, 3),
    ],
)
async def test_a_conflict_answer_older_than_a_state_in_flight_is_asked_again(
    tmp_path: Path, other: dict[str, Any], final: int
) -> None:
    async with collection_pair(tmp_path, SCHEMA) as (fork, master):
        await master.insert({"id": "x", "w": 1})
        # the fork got w=2 through another replication: no assumed state here, so it pushes
        await fork.insert({"id": "x", "w": 2})
        history: list[int] = []  # every state the fork stored
        fork.changes.subscribe(lambda event: history.append(event.document["w"]))
        handler = ReadThenAnswer(master, other)
        async with WirePipe(handler) as pipe:
            state = replicate(fork, pipe.handler, "fork-of-master")
            resolved: list[Any] = []
            state.conflicts.subscribe(resolved.append)
            async with asyncio.timeout(WAIT):
                await state.wait_for_in_sync()
            await state.cancel()
        # never the state the first answer read (w=1): rolled back, then forward again,
        # with the rollback pushed on as a new write by any other replication of the fork
        assert history == ([] if final == 2 else [3])
        assert await wire_state(fork, "x") == {"id": "x", "w": final, "_deleted": False}
        assert await wire_state(master, "x") == {"id": "x", "w": final, "_deleted": False}
        # the first answer was the state read before the other write: stale; asked again
        assert handler.answers[0] == [{"id": "x", "w": 1, "_deleted": False}]
        assert len(handler.answers) >= 2
        assert [r.conflict.real_master_state["w"] for r in resolved] == ([] if final == 2 else [3])
        doc = await fork.find_one("x")
        assert doc is not None and doc.revision.startswith("1-" if final == 2 else "2-")
