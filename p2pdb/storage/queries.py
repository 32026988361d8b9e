"""Reads of many documents: compiled queries, counts, and the change sequence of a
collection."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from ..query import CompiledQuery
from .catalog import CollectionInfo
from .documents import COLUMNS, to_state

__all__ = ["QueryRun", "changes_since", "count", "last_seq", "plan_query"]

#: Runs a planned query on a connection.
QueryRun = Callable[[sqlite3.Connection], list[dict[str, Any]]]


def plan_query(
    info: CollectionInfo, query: CompiledQuery, skip: int, limit: int | None
) -> tuple[QueryRun, bool]:
    """A function listing the live states matching ``query`` (sorted, skipped, limited),
    and whether it is bounded (a ``LIMIT`` in SQL: cheap enough to run on the event loop)."""
    sql = (
        f"SELECT {COLUMNS} FROM {info.table} "
        f"WHERE deleted = 0 AND ({query.where_sql}) ORDER BY {query.order_sql}"
    )
    params: tuple[Any, ...] = tuple(query.where_params)
    residual = query.residual
    if residual is None and limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += (limit, skip)
    elif residual is None and skip:
        sql += " LIMIT -1 OFFSET ?"
        params += (skip,)

    def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        states = [to_state(info, row) for row in conn.execute(sql, params)]
        if residual is None:
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
    conn: sqlite3.Connection, info: CollectionInfo, seq: int, limit: int
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """``(seq, state)`` pairs written after ``seq`` in sequence order, and the last one's
    sequence (``seq`` if none)."""
    rows = conn.execute(
        f"SELECT {COLUMNS}, seq FROM {info.table} WHERE seq > ? ORDER BY seq LIMIT ?",
        (seq, limit),
    ).fetchall()
    out = [(row[5], to_state(info, row[:5])) for row in rows]
    return out, (rows[-1][5] if rows else seq)
