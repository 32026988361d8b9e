"""A push the master stored but whose answer the fork never got must not be rolled back.

The two-peer rollback the nemesis found (issue #14, docs/reliability.md): a fork pushes
``x = 1``; the master stores it, and the link drops (or the fork is killed) before the
answer arrives, so the fork still assumes the master holds the state before. The fork then
writes ``x = 2`` (or removes ``x``) and, in a new session, pushes it against that older
assumed state. The master holds the fork's own ``x = 1``: answered as a conflict, the
default ``master_wins`` handed the fork its own older state back and undid its newer,
acknowledged write (or brought a removed document back) on both sides.

A master whose ``origin`` names one remote (``origin_is_remote=True``, as every WebRTC
peer's master) reads who stored the current state (the row's ``origin``, kept in the file):
a push over a state that remote's own push stored is its next state, not a conflict, also
after the master restarted. Each session here is a new handler over a new
:class:`~p2pdb.replication.testing.WirePipe`, as each WebRTC session is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import reactivex
from reactivex import Observable
from replication_helpers import ID_W_SCHEMA, HandlerWrapper

import p2pdb
from p2pdb.errors import PeerError
from p2pdb.plugins.replication_webrtc.admission import peer_master
from p2pdb.plugins.replication_webrtc.options import WebRTCReplicationOptions
from p2pdb.plugins.replication_webrtc.peer import Peer
from p2pdb.replication import (
    ChangesBatch,
    ReplicationHandler,
    Resync,
    WriteRow,
    collection_handler,
    replicate,
)
from p2pdb.replication.testing import WirePipe

SCHEMA = ID_W_SCHEMA
ORIGIN = "webrtc:topic:KEY||fork-token"  # what a WebRTC master names one peer's pushes
WAIT = 10.0

Master = Callable[[p2pdb.Collection], ReplicationHandler]


def handler_factories() -> dict[str, Master]:
    """A master as the core makes it, and as a WebRTC session makes it for one peer."""
    peer = Peer("fork-peer", "connection-1")
    options = WebRTCReplicationOptions()
    return {
        "collection_handler": lambda c: collection_handler(c, ORIGIN, origin_is_remote=True),
        "peer_master": lambda c: peer_master(c, ORIGIN, options, peer),
    }


class AnswerLost(HandlerWrapper):
    """A master that stores a push, then fails like a link dropped before the answer. The
    link drops its stream too: the stored state's event never reaches the fork (which could
    otherwise learn from it, in time, that the master holds its state; the tests here are
    about what the master decides when the fork knows nothing)."""

    def __init__(self, inner: ReplicationHandler) -> None:
        super().__init__(inner)
        self.stored = asyncio.Event()

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        await self.inner.write(rows)
        self.stored.set()
        raise PeerError("The link dropped before the answer.", code="WIRE_PEER_GONE")

    def stream(self) -> Observable[ChangesBatch | Resync]:
        return reactivex.never()


async def state_of(collection: p2pdb.Collection, doc_id: str) -> dict[str, Any] | None:
    doc = await collection.find_one(doc_id)
    return None if doc is None else doc.to_dict()


async def lose_the_answer(fork: p2pdb.Collection, master: ReplicationHandler) -> None:
    """Session 1: the fork pushes what it holds; the master stores it, the answer is lost."""
    lost = AnswerLost(master)
    failed = asyncio.Event()
    async with WirePipe(lost) as pipe:
        # no retry within the test: the next session pushes again
        state = replicate(
            fork, pipe.handler, "fork-of-master", retry_delay=60.0, max_retry_delay=60.0
        )
        state.errors.subscribe(lambda _error: failed.set())
        async with asyncio.timeout(WAIT):
            await lost.stored.wait()
            await failed.wait()  # the fork saw its push fail: it still assumes nothing
        await state.cancel()


async def next_session(fork: p2pdb.Collection, master: ReplicationHandler) -> list[Any]:
    """Session 2 (a new handler, a new pipe, the same replication id): one full pass each
    way; returns the conflicts the fork's handler resolved."""
    async with WirePipe(master) as pipe:
        state = replicate(fork, pipe.handler, "fork-of-master", live=False)
        resolved: list[Any] = []
        state.conflicts.subscribe(resolved.append)
        async with asyncio.timeout(WAIT):
            await state.wait_for_initial_replication()
        await state.cancel()
        return resolved


@pytest.fixture
async def pair(tmp_path: Path) -> Any:
    async with (
        p2pdb.create_database(str(tmp_path / "master.db")) as master_db,
        p2pdb.create_database(str(tmp_path / "fork.db")) as fork_db,
    ):
        master = await master_db.add_collection("docs", schema=SCHEMA)
        fork = await fork_db.add_collection("docs", schema=SCHEMA)
        yield master, fork


@pytest.mark.parametrize("make", list(handler_factories()))
@pytest.mark.parametrize("last_write", ["update", "remove"])
@pytest.mark.parametrize("master_restarts", [False, True])
async def test_a_push_whose_answer_was_lost_is_not_rolled_back(
    tmp_path: Path, make: str, last_write: str, master_restarts: bool
) -> None:
    factory = handler_factories()[make]
    path = str(tmp_path / "master.db")
    async with p2pdb.create_database(str(tmp_path / "fork.db")) as fork_db:
        fork = await fork_db.add_collection("docs", schema=SCHEMA)
        doc = await fork.insert({"id": "x", "w": 1})
        master_db = await p2pdb.create_database(path)
        try:
            master = await master_db.add_collection("docs", schema=SCHEMA)
            await lose_the_answer(fork, factory(master))
            assert await state_of(master, "x") == {"id": "x", "w": 1}  # the master stored it
            if master_restarts:  # what the master knows of that push must survive a restart
                await master_db.close()
                master_db = await p2pdb.create_database(path)
                master = await master_db.add_collection("docs", schema=SCHEMA)
            assert master.storage.origin("docs", "x") == ORIGIN  # who stored it: that peer
            assert master.storage.origin("docs", "nothing") is None

            # the owner writes on, acknowledged, before the next session
            if last_write == "update":
                await doc.patch({"w": 2})
                expected: dict[str, Any] | None = {"id": "x", "w": 2}
            else:
                await doc.remove()
                expected = None

            resolved = await next_session(fork, factory(master))
            assert await state_of(fork, "x") == expected, "the fork's own write was undone"
            assert await state_of(master, "x") == expected
            assert resolved == []  # its own earlier push is no conflict
        finally:
            await master_db.close()


async def test_a_state_someone_else_stored_meanwhile_is_still_a_conflict(
    pair: tuple[p2pdb.Collection, p2pdb.Collection],
) -> None:
    master, fork = pair
    factory = handler_factories()["collection_handler"]
    doc = await fork.insert({"id": "x", "w": 1})
    await lose_the_answer(fork, factory(master))
    stored = await master.find_one("x")
    assert stored is not None
    await stored.patch({"w": 7})  # the master's own writer, after the fork's push
    await doc.patch({"w": 2})

    resolved = await next_session(fork, factory(master))
    assert len(resolved) == 1  # a real conflict, resolved by master_wins
    assert await state_of(fork, "x") == {"id": "x", "w": 7}
    assert await state_of(master, "x") == {"id": "x", "w": 7}


async def test_without_origin_is_remote_a_shared_origin_keeps_every_conflict(
    pair: tuple[p2pdb.Collection, p2pdb.Collection],
) -> None:
    """The default (an origin several forks may share, such as ``"replication"``) never
    takes a stored state for the pushing fork's own."""
    master, fork = pair
    doc = await fork.insert({"id": "x", "w": 1})
    await lose_the_answer(fork, collection_handler(master))
    await doc.patch({"w": 2})
    resolved = await next_session(fork, collection_handler(master))
    assert len(resolved) == 1
    assert await state_of(fork, "x") == {"id": "x", "w": 1}
