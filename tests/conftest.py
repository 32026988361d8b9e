"""Shared fixtures: real SQLite files in temporary folders."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from schemas import TODO_SCHEMA

import p2pdb


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "app.db")


@pytest.fixture
async def db(db_path: str) -> AsyncIterator[p2pdb.Database]:
    database = await p2pdb.create_database(db_path)
    yield database
    await database.close()


@pytest.fixture
async def todos(db: p2pdb.Database) -> p2pdb.Collection:
    return await db.add_collection("todos", schema=TODO_SCHEMA)
