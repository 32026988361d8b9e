"""Fixtures for the websocket replication tests: real SQLite files, a real server on
127.0.0.1 (a free port chosen by the OS), real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.plugins.replication_websocket import ReplicationServer, start_replication_server


@pytest.fixture
async def server_db(tmp_path: Path) -> AsyncIterator[p2pdb.Database]:
    db = await p2pdb.create_database(str(tmp_path / "server.db"))
    await db.add_collection("todos", TODO_SCHEMA)
    yield db
    await db.close()


@pytest.fixture
async def client_db(tmp_path: Path) -> AsyncIterator[p2pdb.Database]:
    db = await p2pdb.create_database(str(tmp_path / "client.db"))
    await db.add_collection("todos", TODO_SCHEMA)
    yield db
    await db.close()


@pytest.fixture
async def server(server_db: p2pdb.Database) -> AsyncIterator[ReplicationServer]:
    async with await start_replication_server(server_db, port=0) as running:
        yield running
