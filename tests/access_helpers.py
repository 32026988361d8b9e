"""Helpers for the access and partial replication tests (tests/test_access.py,
tests/test_partial_replication.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.errors import P2PDBError, PeerError
from p2pdb.replication import ReplicationHandler
from p2pdb.replication.testing import WirePipe

Doc = dict[str, Any]


@asynccontextmanager
async def two_databases(tmp_path: Path) -> AsyncIterator[tuple[p2pdb.Database, p2pdb.Database]]:
    """A master and a fork database file, each with a ``todos`` collection."""
    master = await p2pdb.create_database(str(tmp_path / "master.db"))
    fork = await p2pdb.create_database(str(tmp_path / "fork.db"))
    try:
        await master.add_collection("todos", schema=TODO_SCHEMA)
        await fork.add_collection("todos", schema=TODO_SCHEMA)
        yield master, fork
    finally:
        await fork.close()
        await master.close()


def stored_rows(db: p2pdb.Database) -> dict[str, Doc]:
    """Every stored state of the todos collection, tombstones included, by id."""
    pairs, _ = db.storage.changes_since("todos", 0, 1_000_000)
    return {state["id"]: state for _, state in pairs}


@asynccontextmanager
async def served(handler: ReplicationHandler, over_wire: bool) -> AsyncIterator[Any]:
    """The fork's handler: ``handler`` itself, or a RemoteMaster over the in-memory pipe."""
    if not over_wire:
        yield handler
        return
    async with WirePipe(handler) as pipe:
        yield pipe.handler


async def wait_for(state: Any, condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Wait, woken by each change of ``state.active``, until ``condition()`` holds."""
    changed = asyncio.Event()
    subscription = state.active.subscribe(lambda _busy: changed.set())
    try:
        async with asyncio.timeout(seconds):
            while not condition():
                changed.clear()
                await changed.wait()
    finally:
        subscription.dispose()


def refusal_code(error: BaseException) -> str | None:
    """REPLICATION_WRITE_REFUSED, directly or as the code of a remote error."""
    if isinstance(error, PeerError) and error.code == "WIRE_REMOTE_ERROR":
        remote = error.parameters.get("remote_error")
        return remote.get("code") if isinstance(remote, dict) else None
    return error.code if isinstance(error, P2PDBError) else None
