"""Reads of many documents: compiled queries, counts, and the change sequence of a
collection."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from ..query import CompiledQuery
from .catalog import CollectionInfo
from .documents import COLUMNS, WIDTH, DamageLog, decode_row

__all__ = ["QueryRun", "changes_since", "count", "last_seq", "plan_query"]

#: Rows read per query while rows are being skipped (see :func:`changes_since`).
_SKIP_PAGE = 512
#: Runs a planned query on a connection.
QueryRun = Callable[[sqlite3.Connection], list[dict[str, Any]]]


def plan_query(
    info: CollectionInfo,
    query: CompiledQuery,
    skip: int,
    limit: int | None,
    damage: DamageLog,
) -> tuple[QueryRun, bool]:
    """A function listing the live states matching ``query`` (sorted, skipped, limited),
    and whether it is bounded (a ``LIMIT`` in SQL: cheap enough to run on the event loop).

    A damaged row (its body fails authentication) is reported to ``damage`` and left out;
    a page it took a place on is read on past it, so the page stays full."""
    sql = (
        f"SELECT {COLUMNS} FROM {info.table} "
        f"WHERE deleted = 0 AND ({query.where_sql}) ORDER BY {query.order_sql}"
    )
    base_sql, base_params = sql, tuple(query.where_params)
    params: tuple[Any, ...] = base_params
    residual = query.residual
    if residual is None and limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += (limit, skip)
    elif residual is None and skip:
        sql += " LIMIT -1 OFFSET ?"
        params += (skip,)

    def decode(rows: Iterable[Any]) -> tuple[list[dict[str, Any]], int]:
        states, dropped = [], 0
        for row in rows:
            state = decode_row(info, row, damage)
            if state is None:
                dropped += 1
            else:
                states.append(state)
        return states, dropped

    def refill(conn: sqlite3.Connection, want: int, fetch: int) -> list[dict[str, Any]]:
        # damaged rows took places on the page: read from the start, past them (rare)
        while True:
            rows = conn.execute(base_sql + " LIMIT ?", (*base_params, fetch)).fetchall()
            states, dropped = decode(rows)
            if len(states) >= want or len(rows) < fetch:
                return states[skip:want]
            fetch += dropped

    def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        states, dropped = decode(conn.execute(sql, params))
        if residual is None:
            if dropped and limit is not None:
                return refill(conn, skip + limit, skip + limit + dropped)
            return states
        matched = [s for s in states if residual(s)]
        return matched[skip : None if limit is None else skip + limit]

    return run, limit is not None and residual is None


def count(conn: sqlite3.Connection, info: CollectionInfo, query: CompiledQuery) -> int:
    """How many live states match a query without a residual (Python-side) filter."""
    sql = f"SELECT count(*) FROM {info.table} WHERE deleted = 0 AND ({query.where_sql})"
    value: int = conn.execute(sql, tuple(query.where_params)).fetchone()[0]
    return value


def last_seq(conn: sqlite3.Connection, info: CollectionInfo) -> int:
    """The sequence number of the collection's latest write (0 if none)."""
    row = conn.execute(f"SELECT max(seq) FROM {info.table}").fetchone()
    return int(row[0] or 0)


def changes_since(
    conn: sqlite3.Connection,
    info: CollectionInfo,
    seq: int,
    limit: int,
    damage: DamageLog,
    skip: Callable[[str, str], bool] | None = None,
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """``(seq, state)`` pairs written after ``seq`` in sequence order, and the last one's
    sequence (``seq`` if none). A damaged row is reported and skipped (the sequence moves
    past it), and the batch is filled up behind it: a short batch still means "no more".
    A row for which ``skip(id, rev)`` is true is passed over the same way, unread."""
    out: list[tuple[int, dict[str, Any]]] = []
    last = seq
    while len(out) < limit:
        # skipping, read ahead in pages: rows passed over do not count towards ``limit``
        want = limit - len(out) if skip is None else max(limit - len(out), _SKIP_PAGE)
        rows = conn.execute(
            f"SELECT {COLUMNS}, seq FROM {info.table} WHERE seq > ? ORDER BY seq LIMIT ?",
            (last, want),
        ).fetchall()
        for row in rows:
            last = row[WIDTH]
            if skip is not None and skip(row[0], row[1]):
                continue
            state = decode_row(info, row[:WIDTH], damage)
            if state is not None:
                out.append((last, state))
                if len(out) == limit:
                    return out, last
        if len(rows) < want:
            break
    return out, last
