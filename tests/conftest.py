"""Shared fixtures: real SQLite files in temporary folders; system packages that the
selected tests need, installed before the first test runs."""

from __future__ import annotations

import contextlib
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
    """Install coturn, redis-server and Chromium (as root, with apt-get) if selected tests need
    them, here rather than in a fixture so that no test's timeout covers the install. (The interop
    tests' Node packages are installed by tests/interop/conftest.py the same way.)"""
    if session.config.option.collectonly:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    browser = sys.modules.get("chromium_devtools")  # imported only by the browser tests
    if browser is not None and shutil.which(browser.CHROMIUM) is None:
        if reporter is not None:
            reporter.write_line("browser: installing chromium with apt-get (the browser test)")
        with contextlib.suppress(browser.BrowserError):
            browser.chromium_executable()  # a failure is reported by the test itself
    redis = sys.modules.get("redis_helpers")  # imported only by the signaling-on-Redis tests
    if redis is not None and any(
        getattr(getattr(item, "module", None), "running_redis", None) is redis.running_redis
        for item in session.items
    ):
        if reporter is not None and shutil.which("redis-server") is None:
            reporter.write_line("redis: installing redis-server with apt-get (signaling tests)")
        redis.find_or_install_redis()
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
        if reporter is not None and shutil.which("turnserver") is None:
            reporter.write_line("turn: installing coturn with apt-get (the TURN tests need it)")
        turn.find_or_install_turnserver()
