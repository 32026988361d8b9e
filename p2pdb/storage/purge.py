"""Purging tombstones: deleting the rows of removed documents for good, in small batches.

A purge removes rows, not states: it writes no sequence number and emits no change event
(a tombstone is invisible to queries already). Each call scans a bounded window of the
change sequence, so the writer thread is held for a short transaction and other writes get
in between batches (see ``p2pdb/cleanup.py`` for the policy deciding what may go).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PurgeBatch", "purge_batch"]


@dataclass(frozen=True, slots=True)
class PurgeBatch:
    """What one batch did: ``purged`` rows deleted, the sequence number ``scanned_to``
    (the next batch starts after it) and whether the scan reached ``upto_seq`` (``done``)."""

    purged: int
    scanned_to: int
    done: bool


def purge_batch(
    conn: sqlite3.Connection,
    table: str,
    *,
    after_seq: int,
    upto_seq: int,
    older_than_lwt: float,
    scan: int,
    limit: int,
    keep: Callable[[list[str]], set[str]] | None = None,
) -> PurgeBatch:
    """Delete from the collection table ``table``, inside the caller's transaction, the
    tombstones with ``after_seq < seq <= upto_seq`` written before ``older_than_lwt`` (ms,
    the rows' ``lwt``), looking at ``scan`` rows at most (in sequence order, by the ``seq``
    index) and deleting ``limit`` at most. ``keep(ids)``, given the candidates' ids, names
    those that must stay."""
    rows = conn.execute(
        f"SELECT seq, id, deleted, lwt FROM {table} WHERE seq > ? AND seq <= ? "
        "ORDER BY seq LIMIT ?",
        (after_seq, upto_seq, scan),
    ).fetchall()
    if not rows:
        return PurgeBatch(0, upto_seq, True)
    # not relying on lwt growing with seq: rows may carry an imported or a foreign clock
    candidates: list[tuple[int, str]] = []
    done, last = len(rows) < scan, rows[-1][0]
    for seq, doc_id, deleted, lwt in rows:
        if deleted and lwt < older_than_lwt:
            candidates.append((seq, doc_id))
            if len(candidates) == limit:  # deleting costs far more than looking
                done, last = False, seq
                break
    kept = keep([i for _, i in candidates]) if keep is not None and candidates else set()
    gone = [(seq,) for seq, i in candidates if i not in kept]
    conn.executemany(f"DELETE FROM {table} WHERE seq = ? AND deleted = 1", gone)
    return PurgeBatch(len(gone), upto_seq if done else last, done)
