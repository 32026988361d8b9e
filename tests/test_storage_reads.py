"""Inline reads (storage/connection.py ``Connections.read``): on the writer's connection when
its thread is idle and no transaction is open there (its page cache stays warm across its own
commits), else on the reader's; the committed state either way."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from p2pdb.storage.connection import Connections


def init(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v TEXT)")


@pytest.fixture
async def conns(tmp_path: Path) -> AsyncIterator[Connections]:
    connections = Connections(str(tmp_path / "reads.db"))
    await connections.open(init)
    yield connections
    await connections.close()


def put(k: str, v: str) -> Any:
    return lambda conn: conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (k, v))


def value(conn: sqlite3.Connection, k: str = "a") -> str | None:
    row = conn.execute("SELECT v FROM t WHERE k = ?", (k,)).fetchone()
    return None if row is None else str(row[0])


async def write(conns: Connections, body: Any, *, small: bool = False) -> None:
    """``body`` in one transaction (``small``: on the loop while the thread is idle)."""
    await conns.transaction(body, lambda _: None, small=small)


def on_reader(conns: Connections) -> Any:
    return lambda conn: conn is conns.reader()


async def test_a_read_after_a_write_runs_on_the_idle_writers_connection(
    conns: Connections,
) -> None:
    await write(conns, put("a", "1"), small=True)  # on the loop
    assert not conns.read(on_reader(conns))
    assert conns.read(value) == "1"
    await write(conns, put("a", "2"))  # on the writer thread
    assert not conns.read(on_reader(conns))
    assert conns.read(value) == "2"


async def test_inside_a_transaction_a_read_goes_to_the_reader_and_sees_the_committed_state(
    conns: Connections,
) -> None:
    await write(conns, put("a", "before"), small=True)
    seen: list[Any] = []

    def body(conn: sqlite3.Connection) -> None:  # a small one: on the loop, in its transaction
        put("a", "after")(conn)
        seen.append(conns.read(on_reader(conns)))
        seen.append(conns.read(value))  # not yet committed: not seen

    await write(conns, body, small=True)
    assert seen == [True, "before"]
    assert conns.read(value) == "after"


async def test_while_the_writer_thread_works_a_read_goes_to_the_reader(
    conns: Connections,
) -> None:
    entered, release = threading.Event(), threading.Event()

    def held(conn: sqlite3.Connection) -> None:
        put("a", "uncommitted")(conn)
        entered.set()
        release.wait(10)

    task = asyncio.ensure_future(write(conns, held))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        assert conns.read(on_reader(conns))
        assert conns.read(value) is None
    finally:
        release.set()
        await task
    assert conns.read(value) == "uncommitted"


async def test_a_read_the_writers_connection_finds_locked_goes_to_the_reader(
    conns: Connections,
) -> None:
    await write(conns, put("a", "1"), small=True)
    used: list[bool] = []

    def read(conn: sqlite3.Connection) -> str | None:
        used.append(conn is conns.reader())
        if not used[-1]:
            raise sqlite3.OperationalError("database is locked")
        return value(conn)

    assert conns.read(read) == "1"
    assert used == [False, True]

    def broken(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("no such table: nothing")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        conns.read(broken)  # any other error is raised, not retried


async def test_a_closed_connection_pair_refuses_reads(conns: Connections) -> None:
    await conns.close()
    with pytest.raises(Exception, match="closed") as caught:
        conns.read(value)
    assert getattr(caught.value, "code", None) == "DATABASE_CLOSED"
