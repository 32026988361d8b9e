"""Notice writes made to the same file by another process (or another Database object).

Every ``interval`` seconds the tailer asks SQLite's ``PRAGMA data_version``, which changes
only when another connection committed; only then does it read the rows whose ``seq`` is
past its cursor (an indexed range scan, never the whole table). Rows this database wrote
itself are recognised by the sequence ranges its writer recorded before each commit, so an
event is never emitted twice.

Events from other writers have ``previous=None`` (their previous state is gone from disk)
and an ``operation`` read from the row: ``DELETE`` for a tombstone, ``INSERT`` for a first
revision, ``UPDATE`` otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .changes import ChangeEvent, Operation
from .storage import SQLiteStorage, revision_height
from .tasks import cancel_and_wait

__all__ = ["ForeignWriteTailer"]

log = logging.getLogger("p2pdb.tailer")


class ForeignWriteTailer:
    """Polls for foreign commits and hands their events to ``emit``."""

    def __init__(
        self,
        storage: SQLiteStorage,
        emit: Callable[[list[ChangeEvent]], None],
        interval: float = 0.05,
    ) -> None:
        self._storage = storage
        self._emit = emit
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._version = -1
        self._cursor = storage.current_seq()
        self._safe = self._cursor
        self._own_ranges: list[tuple[int, int]] = []

    @property
    def safe_seq(self) -> int:
        """Every write up to this sequence number has been emitted: a checkpoint at or
        below it never skips a change (another process's commit may still be unread
        above it)."""
        return self._safe

    def note_own(self, first: int, last: int) -> None:
        """Record that this database's own writes ``first..last`` were emitted."""
        self._own_ranges.append((first, last))
        self._advance()

    def _advance(self) -> None:
        self._own_ranges.sort()
        while self._own_ranges and self._own_ranges[0][0] <= self._safe + 1:
            self._safe = max(self._safe, self._own_ranges.pop(0)[1])

    async def start(self) -> ForeignWriteTailer:
        """Begin polling on the running loop (again: nothing); returns the tailer."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll_forever())
        return self

    async def close(self) -> None:
        """Stop polling (the polling task is cancelled and awaited)."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])

    async def __aenter__(self) -> ForeignWriteTailer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _poll_forever(self) -> None:
        while True:
            try:
                self.poll()
            except Exception:  # a busy or vanished file: try again next tick
                log.exception("Reading changes of other writers failed")
            await asyncio.sleep(self._interval)

    def _foreign_gaps(self, after: int, upto: int) -> list[tuple[int, int]]:
        """The ``(after, upto]`` ranges not written by this database itself: only those
        are read back (a 10,000-document bulk insert of our own is never re-read)."""
        gaps = []
        low = after
        for first, last in self._storage.own_seq_ranges():
            if last <= low:
                continue
            if first > upto:
                break
            if first - 1 > low:
                gaps.append((low, first - 1))
            low = max(low, last)
        if low < upto:
            gaps.append((low, upto))
        return gaps

    def poll(self) -> None:
        """Emit the events of foreign commits since the last call."""
        version = self._storage.data_version()
        if version == self._version:
            return
        self._version = version
        top = self._storage.current_seq()
        if top <= self._cursor:
            return
        events: list[ChangeEvent] = []
        rows = []
        for after, upto in self._foreign_gaps(self._cursor, top):
            rows += self._storage.rows_between(after, upto)
        for name, seq, doc_id, state, origin in rows:
            height = revision_height(state["_rev"])
            operation: Operation = (
                "DELETE" if state["_deleted"] else ("INSERT" if height == 1 else "UPDATE")
            )
            events.append(ChangeEvent(operation, name, doc_id, state, None, origin, seq))
        self._cursor = top
        self._safe = max(self._safe, top)
        self._advance()
        self._storage.forget_own_seqs(top)
        events.sort(key=lambda e: e.seq)
        if events:
            self._emit(events)
