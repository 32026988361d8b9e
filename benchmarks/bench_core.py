"""Core database throughput against plain stdlib sqlite3 on the same machine, same run.

    python benchmarks/bench_core.py [--rounds 5] [--only bulk_insert,find_one,query]

Figures (each round measures p2pdb and its baseline back to back; medians are reported):

* ``bulk_insert``: ``collection.bulk_insert`` of 10,000 ~1 KB documents, schema validation
  on (see ``_common.SCHEMA``: 8 typed properties, an index on the integer ``n``), into a
  fresh database file. Baseline: stdlib ``sqlite3`` ``executemany`` of the same documents
  as (id, body) rows, bodies already JSON, in one transaction, into a fresh WAL file with
  ``synchronous=NORMAL`` (p2pdb's settings) and no index. An extra line shows the
  baseline when ``json.dumps`` is counted too.
* ``find_one``: ``await collection.find_one(id)`` for 10,000 random ids, one after another.
  Baseline: ``SELECT body FROM t WHERE id=?`` + ``json.loads`` in a loop.
* ``query``: ``await collection.find({"n": {"$gt": X}}, sort=[{"n": "asc"}], limit=10)``
  with random X. Baseline: the same SQL on sqlite3 with an equivalent expression index on
  ``(json_extract(body, '$.n'), id)``, + ``json.loads`` of the 10 rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import sys
import tempfile

from _common import (
    N_MAX,
    SCHEMA,
    Row,
    Timer,
    machine_line,
    make_docs,
    only_from_argv,
    print_table,
    rounds_from_argv,
    temp_dir,
    wanted,
)

import p2pdb

DOCS = 10_000
LOOKUPS = 10_000
QUERIES = 2_000


# -- baselines (stdlib sqlite3) ------------------------------------------------------------


def raw_open(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    return conn


def raw_bulk(path: str, docs: list[dict], serialize: bool) -> float:
    """Seconds to insert ``docs`` in one transaction (optionally counting json.dumps)."""
    conn = raw_open(path)
    rows = None if serialize else [(d["id"], json.dumps(d)) for d in docs]
    with Timer() as t:
        if rows is None:
            rows = [(d["id"], json.dumps(d)) for d in docs]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (id, body) VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    conn.close()
    return t.seconds


def raw_populated(path: str, docs: list[dict]) -> sqlite3.Connection:
    conn = raw_open(path)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(d["id"], json.dumps(d)) for d in docs])
    conn.execute("CREATE INDEX ix_n ON t (json_extract(body, '$.n'), id)")
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    return conn


def raw_find_one(conn: sqlite3.Connection, ids: list[str]) -> float:
    loads = json.loads
    with Timer() as t:
        for i in ids:
            row = conn.execute("SELECT body FROM t WHERE id = ?", (i,)).fetchone()
            loads(row[0])
    return t.seconds


RAW_QUERY = (
    "SELECT body FROM t WHERE json_extract(body, '$.n') > ? "
    "ORDER BY json_extract(body, '$.n') ASC, id ASC LIMIT 10"
)


def raw_query(conn: sqlite3.Connection, xs: list[int]) -> float:
    loads = json.loads
    with Timer() as t:
        for x in xs:
            docs = [loads(b) for (b,) in conn.execute(RAW_QUERY, (x,))]
            assert len(docs) <= 10
    return t.seconds


# -- p2pdb ---------------------------------------------------------------------------------


async def p2pdb_bulk(path: str, docs: list[dict]) -> float:
    db = await p2pdb.create_database(path)
    col = await db.add_collection("docs", SCHEMA)
    with Timer() as t:
        result = await col.bulk_insert(docs)
    assert not result.errors and len(result.success) == len(docs), result.errors[:1]
    await db.close()
    return t.seconds


async def p2pdb_find_one(col: p2pdb.Collection, ids: list[str]) -> float:
    with Timer() as t:
        for i in ids:
            doc = await col.find_one(i)
            assert doc is not None
    return t.seconds


async def p2pdb_query(col: p2pdb.Collection, xs: list[int]) -> float:
    with Timer() as t:
        for x in xs:
            docs = await col.find({"n": {"$gt": x}}, sort=[{"n": "asc"}], limit=10)
            assert len(docs) <= 10
    return t.seconds


async def main() -> int:
    rounds = rounds_from_argv(5)
    only = only_from_argv()
    docs = make_docs(DOCS)
    rng = random.Random(7)
    ids = [d["id"] for d in docs]

    bulk = Row("bulk_insert 10k docs", "docs/s", "sqlite3 executemany", target=0.40)
    bulk_ser = Row("  (same, baseline incl. json.dumps)", "docs/s", "executemany+dumps")
    one = Row("find_one(id) x10k", "lookups/s", "sqlite3 SELECT+loads", target=0.25)
    query = Row("find n>$gt sort n limit 10", "queries/s", "sqlite3 same SQL+loads", target=0.25)

    for r in range(rounds):
        with temp_dir() as tmp:
            if wanted(only, "bulk_insert"):
                # alternate the order so neither side always runs on a warmer machine
                for first in (0, 1) if r % 2 == 0 else (1, 0):
                    if first == 0:
                        raw = raw_bulk(os.path.join(tmp, f"raw{r}.db"), docs, serialize=False)
                    else:
                        mine = await p2pdb_bulk(os.path.join(tmp, f"p2p{r}.db"), docs)
                raw_ser = raw_bulk(os.path.join(tmp, f"raws{r}.db"), docs, serialize=True)
                bulk.add(DOCS / mine, DOCS / raw)
                bulk_ser.add(DOCS / mine, DOCS / raw_ser)
            if wanted(only, "find_one") or wanted(only, "query"):
                conn = raw_populated(os.path.join(tmp, "rawq.db"), docs)
                db = await p2pdb.create_database(os.path.join(tmp, "p2pq.db"))
                col = await db.add_collection("docs", SCHEMA)
                await col.bulk_insert(docs)
                if wanted(only, "find_one"):
                    sample = rng.choices(ids, k=LOOKUPS)
                    raw = raw_find_one(conn, sample)
                    mine = await p2pdb_find_one(col, sample)
                    one.add(LOOKUPS / mine, LOOKUPS / raw)
                if wanted(only, "query"):
                    xs = [rng.randrange(N_MAX) for _ in range(QUERIES)]
                    raw = raw_query(conn, xs)
                    mine = await p2pdb_query(col, xs)
                    query.add(QUERIES / mine, QUERIES / raw)
                conn.close()
                await db.close()

    rows = [r for r in (bulk, bulk_ser, one, query) if r.values]
    print(f"bench_core: {machine_line()}")
    print_table(
        "Core database",
        rows,
        rounds,
        notes=[
            f"{DOCS:,} docs of ~1 KB; fresh file DBs under {tempfile.gettempdir()}",
            "bulk baseline: bodies pre-serialized, one transaction, WAL, synchronous=NORMAL",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
