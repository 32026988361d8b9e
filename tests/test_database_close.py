"""Closing a database stops what uses it (replications, WebRTC pools, websocket clients),
and replicating a closed database raises ``DATABASE_CLOSED``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from schemas import PEER_SCHEMA

import p2pdb
from p2pdb.errors import ClosedError, ReplicationError
from p2pdb.plugins.replication_webrtc import (
    aiortc_connection_handler,
    replicate_webrtc,
    start_signaling_server,
)
from p2pdb.plugins.replication_websocket import replicate_websocket, start_replication_server
from p2pdb.replication import collection_handler, replicate


async def open_todos(path: Path) -> tuple[p2pdb.Database, p2pdb.Collection]:
    db = await p2pdb.create_database(str(path))
    return db, await db.add_collection("todos", schema=PEER_SCHEMA)


async def test_close_with_runs_closers_first_and_unregisters(tmp_path: Path) -> None:
    db, todos = await open_todos(tmp_path / "a.db")
    seen: list[str] = []

    async def first() -> None:
        seen.append(f"first, open={not db.closed}")
        await todos.count()  # the file is still usable while closers run

    async def dropped() -> None:
        seen.append("dropped")

    db.close_with(first)
    db.close_with(dropped)()  # unregistered at once
    await db.close()
    assert seen == ["first, open=True"]
    with pytest.raises(ClosedError) as info:
        db.close_with(first)
    assert info.value.code == "DATABASE_CLOSED"


async def test_closing_the_fork_database_cancels_its_replication(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    master_db, master = await open_todos(tmp_path / "master.db")
    fork_db, fork = await open_todos(tmp_path / "fork.db")
    await master.insert({"id": "m", "text": "x"})
    state = replicate(fork, collection_handler(master), "r")
    await state.wait_for_in_sync()
    caplog.set_level(logging.WARNING)
    await fork_db.close()
    assert state.canceled
    with pytest.raises(ReplicationError) as info:
        await state.wait_for_in_sync()
    assert info.value.code == "REPLICATION_CANCELED"
    await master.insert({"id": "m2", "text": "after"})
    await asyncio.sleep(0)  # a live replication would react to this batch now
    assert "DATABASE_CLOSED" not in caplog.text
    await master_db.close()


async def test_replicate_on_a_closed_database_raises(tmp_path: Path) -> None:
    master_db, master = await open_todos(tmp_path / "master.db")
    fork_db, fork = await open_todos(tmp_path / "fork.db")
    await fork_db.close()
    with pytest.raises(ClosedError) as info:
        replicate(fork, collection_handler(master), "r")
    assert info.value.code == "DATABASE_CLOSED"
    await master_db.close()


async def test_replicate_webrtc_on_a_closed_database_raises(tmp_path: Path) -> None:
    db, todos = await open_todos(tmp_path / "a.db")
    await db.close()
    joined: list[str] = []

    async def handler(topic: str) -> object:
        joined.append(topic)
        raise AssertionError("the topic must not be joined")

    with pytest.raises(ClosedError) as info:
        await replicate_webrtc(todos, "closed-db-topic", handler)  # type: ignore[arg-type]
    assert info.value.code == "DATABASE_CLOSED"
    assert joined == []


async def test_replicate_websocket_on_a_closed_database_raises(tmp_path: Path) -> None:
    server_db, _ = await open_todos(tmp_path / "server.db")
    db, todos = await open_todos(tmp_path / "client.db")
    await db.close()
    async with await start_replication_server(server_db, port=0) as server:
        with pytest.raises(ClosedError) as info:
            await replicate_websocket(todos, server.url)
        assert info.value.code == "DATABASE_CLOSED"
    await server_db.close()


async def test_closing_a_database_stops_its_websocket_replication(tmp_path: Path) -> None:
    server_db, on_server = await open_todos(tmp_path / "server.db")
    db, todos = await open_todos(tmp_path / "client.db")
    async with await start_replication_server(server_db, port=0) as server:
        state = await replicate_websocket(todos, server.url)
        await todos.insert({"id": "c", "text": "from the client"})
        await state.wait_for_in_sync()
        await db.close()
        assert state.canceled
        assert "c" in await on_server.find_by_ids(["c"])
    await server_db.close()


async def test_closing_a_database_cancels_its_webrtc_pool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db_a, a = await open_todos(tmp_path / "a.db")
    db_b, b = await open_todos(tmp_path / "b.db")
    async with await start_signaling_server(port=0) as signaling:

        def handler() -> object:
            return aiortc_connection_handler(
                signaling.url, ice_servers=[], host_addresses=["127.0.0.1"]
            )

        pool_a = await replicate_webrtc(a, "close-with-db", handler())  # type: ignore[arg-type]
        pool_b = await replicate_webrtc(b, "close-with-db", handler())  # type: ignore[arg-type]
        await a.insert({"id": "a", "text": "from a"})
        await pool_a.wait_for_in_sync(peers=1, timeout=20)
        await pool_b.wait_for_in_sync(peers=1, timeout=20)
        caplog.set_level(logging.WARNING)
        await db_a.close()  # no pool_a.cancel(): the database closes it
        with pytest.raises(ReplicationError) as info:
            await pool_a.wait_for_change()
        assert info.value.code == "REPLICATION_CANCELED"
        # b sees a leave (no retrying against a closed database on either side)
        async with asyncio.timeout(10):
            while pool_b.sessions:
                await pool_b.wait_for_change()
        assert "DATABASE_CLOSED" not in caplog.text
        await db_b.close()
        assert await asyncio.wait_for(_canceled(pool_b), 5)


async def _canceled(pool: object) -> bool:
    try:
        await pool.wait_for_change()  # type: ignore[attr-defined]
    except ReplicationError as exc:
        return exc.code == "REPLICATION_CANCELED"
    return False
