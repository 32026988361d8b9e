"""What the tailer (tailer.py) needs to notice writes by other connections to the file: the
sequence ranges this storage wrote itself, the file's data version and current sequence,
and the rows of a sequence range that someone else wrote."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from ..errors import EncryptionError
from .catalog import CollectionInfo
from .documents import COLUMNS, SEQ_KEY, WIDTH, to_state

__all__ = ["OwnWrites", "current_seq", "data_version", "rows_between"]


class OwnWrites:
    """The sequence ranges this storage's writer committed (noted from the writer thread)."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def note(self, first: int, last: int) -> None:
        """Record a range, from the writer thread before its COMMIT."""
        with self._lock:
            self._ranges.append((first, last))

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges not yet forgotten, sorted."""
        with self._lock:
            return sorted(self._ranges)

    def forget(self, upto: int) -> None:
        """Drop the ranges that end at or before ``upto``."""
        with self._lock:
            self._ranges = [r for r in self._ranges if r[1] > upto]


def data_version(conn: sqlite3.Connection) -> int:
    """SQLite's ``PRAGMA data_version``: changes when another connection commits."""
    value: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return value


def current_seq(conn: sqlite3.Connection) -> int:
    """The last sequence number committed to the file."""
    row = conn.execute("SELECT value FROM p2pdb_info WHERE key = ?", (SEQ_KEY,)).fetchone()
    return int(row[0]) if row else 0


def rows_between(
    conn: sqlite3.Connection,
    collections: list[CollectionInfo],
    own: list[tuple[int, int]],
    after: int,
    upto: int,
) -> list[tuple[str, int, str, dict[str, Any], str]]:
    """``(collection, seq, id, state, origin)`` of rows with ``after < seq <= upto`` outside
    the ``own`` ranges (skipped before decoding them)."""
    out = []
    for info in collections:
        for row in conn.execute(
            f"SELECT {COLUMNS}, seq, origin FROM {info.table} "
            "WHERE seq > ? AND seq <= ? ORDER BY seq",
            (after, upto),
        ):
            if any(first <= row[WIDTH] <= last for first, last in own):
                continue
            try:
                state = to_state(info, row[:WIDTH])
            except EncryptionError as exc:
                if exc.code != "ENCRYPTION_TAMPERED":
                    raise
                continue  # reported when read; its commit must not stop the others' events
            out.append((info.name, row[WIDTH], row[0], state, row[WIDTH + 1]))
    return out
