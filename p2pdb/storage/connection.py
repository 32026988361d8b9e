"""The two SQLite connections of one file and the threads they run on.

Writes go through one aiosqlite connection (one writer thread): :meth:`Connections.run`
sends a whole function to that thread, so a transaction costs one thread hop, not one per
statement. Reads run on the event loop through a second, plain connection: in WAL mode
readers run beside the writer, and a point read costs a few microseconds, far less than a
thread hop.

A small transaction (:meth:`Connections.transaction` with ``small``: a few rows, tens of
microseconds) runs on the event loop itself when the writer thread has nothing to do: the
two thread hops it saves cost more than the transaction (100-300 us on a loaded machine),
and they are most of a single write's latency. It never waits on the event loop: when
another process holds the write lock it goes to the thread, which waits there; and it never
checkpoints the WAL there (every :data:`INLINE_RUN`-th small transaction goes to the thread,
where SQLite's automatic checkpoint runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiosqlite

from ..backoff import Backoff
from ..errors import ClosedError, StorageError

__all__ = ["INLINE_RUN", "Connections", "retry_locked", "storage_error", "transaction"]

T = TypeVar("T")

_BUSY_TIMEOUT_MS = 10_000
_OPEN_ATTEMPTS = 6
_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default
#: Small transactions in a row that run on the event loop; the next goes to the writer thread.
INLINE_RUN = 64


async def retry_locked(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` until it does not fail with a "locked" :class:`StorageError`: two
    processes creating one new file at once can fail switching it to WAL without waiting
    on the busy timeout."""
    backoff = Backoff(0.02, 1.0)
    for tries in range(1, _OPEN_ATTEMPTS + 1):
        try:
            return await attempt()
        except StorageError as exc:
            if "locked" not in str(exc) or tries == _OPEN_ATTEMPTS:
                raise
        await asyncio.sleep(backoff.next_delay())
    raise AssertionError("unreachable")


_SQLITE_IOERR = 10
_SQLITE_FULL = 13


def storage_error(path: str, exc: sqlite3.Error) -> StorageError:
    """The typed error of an SQLite failure on the writer: ``STORAGE_FULL`` (no space
    left), ``STORAGE_IO`` (the disk failed), ``STORAGE_BUSY`` (the write lock was held too
    long) or ``STORAGE_FAILED``. The transaction was rolled back: nothing of it is stored,
    and everything committed before is."""
    primary = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    name = getattr(exc, "sqlite_errorname", None)
    if primary == _SQLITE_FULL:
        return StorageError(
            f"The disk holding {path!r} is full ({exc}): this write was not stored, and "
            "every write that returned before is. Free some space; the database works again "
            "without being reopened.",
            code="STORAGE_FULL",
            path=path,
            sqlite_error=name,
        )
    if primary == _SQLITE_IOERR:
        return StorageError(
            f"SQLite could not read or write {path!r} ({exc}, {name}): this write was not "
            "stored. Check that the disk is present, not full and not failing, then retry.",
            code="STORAGE_IO",
            path=path,
            sqlite_error=name,
        )
    if isinstance(exc, sqlite3.OperationalError) and _locked(exc):
        return StorageError(
            f"SQLite failed on {path!r}: {exc}. Another process held the write lock too long; "
            "retry.",
            code="STORAGE_BUSY",
            path=path,
        )
    return StorageError(f"SQLite failed on {path!r}: {exc}.", code="STORAGE_FAILED", path=path)


class Connections:
    """The writer connection (on its own thread) and the reader connection of one file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._tempdir: str | None = None
        self._submitted = 0  # functions sent to the writer thread
        self._settled = 0  # of those, ended, and what they scheduled on the loop ran
        self._inline_run = 0  # small transactions run on the loop since the last on the thread
        # the writer's settings are the loop's (no busy wait, no checkpoint): switched back
        # by the next function on the thread, not after every small transaction (2-6 us each)
        self._loop_settings = False

    async def open(self, init: Callable[[sqlite3.Connection], T]) -> T:
        """Connect both; ``init`` runs first on the writer thread (it creates the tables)."""
        if self.path == ":memory:":
            # A private file, removed on close: readers and the writer need a shared file.
            self._tempdir = tempfile.mkdtemp(prefix="p2pdb-")
            file = os.path.join(self._tempdir, "memory.db")
        else:
            file = self.path
        try:
            # used by the loop too, never at the same time (see Connections.transaction)
            self._writer = await aiosqlite.connect(
                file, isolation_level=None, check_same_thread=False
            )
            await self._writer.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            await self._writer.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT_PAGES}")
            await self._writer.execute("PRAGMA journal_mode = WAL")
            await self._writer.execute("PRAGMA synchronous = NORMAL")
            result = await self.run(init)
            self._reader = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
            self._reader.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self._reader.execute("PRAGMA query_only = 1")
        except (sqlite3.Error, StorageError) as exc:
            await self.close()
            raise StorageError(
                f"Cannot open database {self.path!r}: {exc}. Check the path and permissions, "
                "and that the file is an SQLite database.",
                code="STORAGE_OPEN",
                path=self.path,
            ) from exc
        return result

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or before :meth:`open`)."""
        return self._writer is None

    async def close(self) -> None:
        """Close both connections (and remove the temp file of a ``":memory:"`` database)."""
        writer, self._writer = self._writer, None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if writer is not None:
            await writer.close()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def _closed_error(self) -> ClosedError:
        return ClosedError(
            f"The database {self.path!r} is closed; open it again to use it.",
            code="DATABASE_CLOSED",
        )

    def reader(self) -> sqlite3.Connection:
        """The reader connection, for inline reads on the event loop."""
        if self._reader is None:
            raise self._closed_error()
        return self._reader

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)``, a short read on the event loop that returns what it read.

        It runs on the writer's connection when the writer thread is idle and no
        transaction is open there, else on the reader's. SQLite drops a connection's whole
        page cache when it sees another connection's commit, so the reader's first read
        after each write starts cold (25 us against 10 us for a point read); the writer's
        own commits leave its cache warm. Both read the last committed state. A read the
        writer's connection finds locked (it does not wait on the loop) goes to the reader.
        """
        reader = self.reader()  # raises ClosedError when closed
        writer = self._writer
        if writer is not None and self._submitted == self._settled:
            conn = writer._conn
            if not conn.in_transaction:  # (a read from inside a write's body: the reader)
                try:
                    return fn(conn)
                except sqlite3.OperationalError as exc:
                    if not _locked(exc):
                        raise
        return fn(reader)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on the writer thread with the writer connection: one hop."""
        writer = self._writer
        if writer is None:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        conn = writer._conn
        # the result comes back through this box, not as the job's return value: aiosqlite's
        # thread keeps its last job's future and return value until the next job arrives
        # (a bulk write's thousands of states and events, kept alive for nothing)
        box: list[T] = []

        def job() -> None:
            try:
                if self._loop_settings:
                    _thread_settings(conn)
                    self._loop_settings = False
                box.append(fn(conn))
            finally:  # after anything fn scheduled on the loop (call_soon_threadsafe is FIFO)
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                    loop.call_soon_threadsafe(self._settle)

        self._submitted += 1
        try:
            # aiosqlite's _execute runs a function on its connection thread: one hop for a
            # whole transaction instead of one per statement.
            await writer._execute(job)  # type: ignore[no-untyped-call]
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc) from exc
        return box.pop()

    def _settle(self) -> None:
        self._settled += 1

    async def transaction(
        self,
        body: Callable[[sqlite3.Connection], T],
        committed: Callable[[T], None],
        *,
        small: bool = False,
    ) -> T:
        """``body(conn)`` in one ``BEGIN IMMEDIATE`` transaction, rolled back if it raises;
        after the ``COMMIT``, ``committed(result)`` runs on the event loop before the
        caller resumes, in commit order.

        ``small``: a transaction of a few rows. It runs on the event loop when the writer
        thread is idle and no other process holds the write lock (see the module
        docstring), else on the thread like any other.
        """
        writer = self._writer
        if writer is None:
            raise self._closed_error()
        conn = writer._conn
        # idle: every function sent to the thread ended, and its commit's callbacks ran
        if small and self._submitted == self._settled and self._inline_run < INLINE_RUN:
            try:
                if not self._loop_settings:
                    _loop_settings(conn)
                    self._loop_settings = True
                began = _begin_at_once(conn)
                if began:
                    self._inline_run += 1
                    result = _commit(conn, body)
            except sqlite3.Error as exc:
                raise storage_error(self.path, exc) from exc
            if began:
                try:
                    committed(result)
                except Exception as exc:  # as from the thread's callback: reported, not raised
                    asyncio.get_running_loop().call_exception_handler(
                        {"message": "Exception in a commit callback", "exception": exc}
                    )
                return result
        self._inline_run = 0
        loop = asyncio.get_running_loop()

        def on_thread(conn: sqlite3.Connection) -> T:
            result = transaction(conn, body)
            loop.call_soon_threadsafe(committed, result)
            return result

        return await self.run(on_thread)

    async def read_in_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A long read (unbounded scan, count) on the writer thread, off the event loop."""
        self.reader()  # raises ClosedError when closed
        return await self.run(fn)


def _loop_settings(conn: sqlite3.Connection) -> None:
    """The writer's settings while it runs on the event loop: never wait for another
    process's lock there, and never checkpoint the WAL there (that can take milliseconds)."""
    conn.execute("PRAGMA busy_timeout = 0")
    conn.execute("PRAGMA wal_autocheckpoint = 0")


def _thread_settings(conn: sqlite3.Connection) -> None:
    """The writer's settings on its thread: wait for a lock, checkpoint as SQLite does."""
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT_PAGES}")


def _begin_at_once(conn: sqlite3.Connection) -> bool:
    """``BEGIN IMMEDIATE`` without waiting (under :func:`_loop_settings`): False if another
    process holds the write lock."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _locked(exc):
            return False
        raise
    return True


def _locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` between ``BEGIN IMMEDIATE`` and ``COMMIT`` (rolled back if it raises);
    on the writer thread (it waits for another process's lock)."""
    conn.execute("BEGIN IMMEDIATE")
    return _commit(conn, fn)


def _commit(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """``body(conn)`` in the transaction just begun, then ``COMMIT`` (``ROLLBACK`` if
    anything raises)."""
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result
