"""A schema migration survives SIGKILL at random points: a child process migrates a file of
20,000 documents (``P2PDB_MIGRATION_CRASH_DOCS=100000`` for the large run) and is killed
several times; reopening continues until done, and every document is migrated exactly once
(each strategy adds 1 to a counter), none lost, the file intact."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path

import orjson

import p2pdb

DOCS = int(os.environ.get("P2PDB_MIGRATION_CRASH_DOCS", "20000"))
KILLS = 5
SEED = int(os.environ.get("P2PDB_MIGRATION_CRASH_SEED", str(random.randrange(1 << 30))))

SCHEMA = {
    "version": 0,
    "type": "object",
    "primaryKey": "id",
    "properties": {
        "id": {"type": "string", "maxLength": 40},
        "n": {"type": "integer"},
        "steps": {"type": "integer"},
        "pad": {"type": "string"},
    },
    "required": ["id", "n", "steps"],
    "indexes": ["n"],
}

CHILD = """
import asyncio, sys, orjson, p2pdb
from p2pdb.migration import migration_progress

def bump(doc):
    doc["steps"] += 1
    return doc

async def bump_async(doc):
    doc["steps"] += 1
    return doc

async def main(path, schema):
    async with p2pdb.create_database(path) as db:
        migration_progress(db).subscribe(lambda p: print("progress", p.done, flush=True))
        await db.add_collection("docs", schema, migration_strategies={1: bump, 2: bump_async})
        print("done", flush=True)

asyncio.run(main(sys.argv[1], orjson.loads(sys.argv[2])))
"""


async def fill(path: Path) -> None:
    async with p2pdb.create_database(path) as db:
        docs = await db.add_collection("docs", SCHEMA)
        for start in range(0, DOCS, 5000):
            await docs.bulk_insert(
                [
                    {"id": f"d{i:06}", "n": i, "steps": 0, "pad": "x" * 200}
                    for i in range(start, min(start + 5000, DOCS))
                ]
            )
        for i in range(0, DOCS, 997):
            await docs.remove_document(f"d{i:06}")


async def run_child(path: Path, kill_after: int | None, delay: float) -> tuple[bool, list[int]]:
    """Run one migration attempt; kill it with SIGKILL after ``kill_after`` progress lines
    (then ``delay`` seconds more). ``(finished, progress values seen)``."""
    v2 = {**SCHEMA, "version": 2}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        orjson.dumps(v2).decode(),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    seen: list[int] = []
    finished = False
    try:
        async with asyncio.timeout(120):
            while line := await process.stdout.readline():
                word, *rest = line.decode().split()
                if word == "done":
                    finished = True
                    break
                seen.append(int(rest[0]))
                if kill_after is not None and len(seen) >= kill_after:
                    await asyncio.sleep(delay)  # a random point inside the next batch
                    with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                        process.send_signal(signal.SIGKILL)
                    # what it printed before the kill (all of it, had it already finished)
                    finished = b"done" in await process.stdout.read()
                    break
    finally:
        if process.returncode is None and not finished:
            process.kill()
        await process.wait()
    return finished, seen


async def test_sigkill_during_migration_loses_nothing_and_migrates_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "crash.db"
    await fill(path)
    batches = -(-DOCS // 1000)
    runs: list[list[int]] = []
    finished = False
    remaining = batches
    for attempt in range(KILLS + 3):
        # a kill within what is left: during a batch, between batches, or in the swap
        kill_after = rng.randint(1, remaining + 1) if attempt < KILLS else None
        finished, seen = await run_child(path, kill_after, rng.uniform(0, 0.05))
        runs.append(seen)
        if seen:
            remaining = max(1, batches - seen[-1] // 1000)
        if finished:
            break
    print(f"seed {SEED}: progress seen per run: {runs}")
    assert finished, f"seed {SEED}: never finished: {runs}"
    # at least one run continued where a killed one stopped, not from the start
    assert any(seen and seen[0] > 0 for seen in runs[1:]), f"seed {SEED}: {runs}"
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT version FROM p2pdb_collections").fetchone()[0] == 2
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert not [t for t in tables if "#" in t]
        records = "SELECT count(*) FROM p2pdb_info WHERE key LIKE 'migration:%'"
        assert conn.execute(records).fetchone()[0] == 0
        rows = conn.execute("SELECT id, deleted, body FROM col_docs").fetchall()
    finally:
        conn.close()
    assert len(rows) == DOCS, f"seed {SEED}"
    bodies = {i: orjson.loads(body) for i, _, body in rows}
    wrong = {i: b["steps"] for i, b in bodies.items() if b["steps"] != 2}
    assert not wrong, f"seed {SEED}: not migrated exactly once: {list(wrong.items())[:5]}"
    assert sum(d for _, d, _ in rows) == len(range(0, DOCS, 997))
    async with p2pdb.create_database(path) as db:
        docs = await db.add_collection("docs", {**SCHEMA, "version": 2})
        live = DOCS - len(range(0, DOCS, 997))
        assert await docs.count() == live
        assert await docs.count({"n": {"$gte": 0}, "steps": 2}) == live
