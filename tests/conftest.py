"""Shared fixtures: real SQLite files in temporary folders; system packages that the
selected tests need, installed before the first test runs."""

from __future__ import annotations

import shutil
import sys
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


def pytest_collection_finish(session: pytest.Session) -> None:
    """Install coturn (as root, with apt-get) if a selected test runs a TURN server, here
    rather than in a fixture so that no test's timeout covers the install. (The interop
    tests' Node packages are installed by tests/interop/conftest.py the same way.)"""
    if session.config.option.collectonly:
        return
    turn = sys.modules.get("turn_helpers")  # imported only by the modules that use it
    if turn is None:
        return
    users = [
        item
        for item in session.items
        if getattr(getattr(item, "module", None), "running_turnserver", None)
        is turn.running_turnserver
    ]
    if users:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and shutil.which("turnserver") is None:
            reporter.write_line("turn: installing coturn with apt-get (the TURN tests need it)")
        turn.find_or_install_turnserver()
