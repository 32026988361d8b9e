"""A crash during ``change_password`` loses nothing: the old password keeps working until
the one transaction commits, the new one after, and every value decrypts to what it was.

A child process opens a copy of a prepared database (a few thousand documents, tombstones,
and the assumed master states of a replication) and changes its password; the test kills
it with SIGKILL at a random moment, opens the file with whichever password is valid and
compares every document, tombstone and replication state with the originals.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import p2pdb
from p2pdb.errors import EncryptionError
from p2pdb.replication import collection_handler, replicate

OLD = "the old password"
NEW = "the new password"
DOCS = 3000
REPLICATION = "to-peer"  # the fork's replication id

SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "n": {"type": "integer"},
        "body": {},
        "meta": {"type": "object", "properties": {"secret": {}}},
    },
    "required": ["id"],
    "encrypted": ["body", "meta.secret"],
}

CHILD = """
import asyncio, sys
import p2pdb

async def main(path, old, new):
    db = await p2pdb.create_database(path, password=old)
    write = db.storage.write

    async def announced(fn):  # the re-encryption transaction
        print("TXN", flush=True)
        result = await write(fn)
        print("COMMITTED", flush=True)
        return result

    db.storage.write = announced
    print("START", flush=True)
    await db.change_password(old, new)
    print("DONE", flush=True)
    await db.close()

asyncio.run(main(*sys.argv[1:]))
"""


Snapshot = tuple[dict[str, dict[str, Any]], dict[str, Any]]


async def snapshot(db: p2pdb.Database) -> Snapshot:
    """Every document (tombstones included) and every assumed master state, decrypted."""
    ids = [f"n{i}" for i in range(DOCS)] + [f"p{i}" for i in range(200)]
    states = db.storage.get("notes", ids)
    return states, db.storage.get_assumed("notes", REPLICATION, ids)


async def prepare(path: str, tmp: Path) -> Snapshot:
    db = await p2pdb.create_database(path, password=OLD)
    peer = await p2pdb.create_database(str(tmp / "peer.db"), password="the peer's password")
    try:
        notes = await db.add_collection("notes", schema=SCHEMA)
        other = await peer.add_collection("notes", schema=SCHEMA)
        rng = random.Random(5)
        await notes.bulk_insert(
            [
                {
                    "id": f"n{i}",
                    "n": i,
                    "body": "".join(rng.choices("abcdefghij ", k=rng.randrange(10, 400))),
                    "meta": {"secret": {"i": i, "tags": ["x"] * (i % 4)}},
                }
                for i in range(DOCS)
            ]
        )
        await other.bulk_insert([{"id": f"p{i}", "body": f"peer {i}"} for i in range(200)])
        async with replicate(notes, collection_handler(other), REPLICATION, live=False) as state:
            await state.wait_for_initial_replication()
        await notes.remove({"n": {"$lt": 150}})  # tombstones
        before = await snapshot(db)
        assert sum(s["_deleted"] for s in before[0].values()) == 150
        assert len(before[1]) == DOCS + 200
        return before
    finally:
        await db.close()
        await peer.close()


async def run_child(path: str, kill: tuple[str, float] | None) -> tuple[list[str], float]:
    """Run the password change; ``kill = (line, delay)``: SIGKILL it ``delay`` seconds after
    it printed ``line`` (START: keys not derived yet; TXN: the re-encryption transaction
    began; COMMITTED: it returned). Returns the lines printed and how long the transaction
    took (when it got that far)."""
    root = str(Path(p2pdb.__file__).parent.parent)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        path,
        OLD,
        NEW,
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    lines: list[str] = []
    started = time.monotonic()
    took = 0.0
    try:
        while line := (await child.stdout.readline()).decode().strip():
            lines.append(line)
            if line == "TXN":
                started = time.monotonic()
            elif line == "COMMITTED":
                took = time.monotonic() - started
            if kill is not None and line == kill[0]:
                await asyncio.sleep(kill[1])
                with contextlib.suppress(ProcessLookupError):  # it may have finished
                    child.send_signal(signal.SIGKILL)
                break
    finally:
        await child.communicate()  # reads to the end, so the pipe is closed, and reaps it
    return lines, took


async def reopen(path: str) -> tuple[str, Snapshot]:
    """Open with whichever password is valid; the other must be refused."""
    try:
        db = await p2pdb.create_database(path, password=OLD)
        password = OLD
    except EncryptionError as exc:
        assert exc.code == "ENCRYPTION_WRONG_PASSWORD"
        db = await p2pdb.create_database(path, password=NEW)
        password = NEW
    try:
        await db.add_collection("notes", schema=SCHEMA)
        return password, await snapshot(db)
    finally:
        await db.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_killed_password_change_loses_nothing(tmp_path: Path) -> None:
    template = str(tmp_path / "template.db")
    before = await prepare(template, tmp_path)

    # how long the transaction takes, uninterrupted
    path = str(tmp_path / "calibrate.db")
    shutil.copy(template, path)
    lines, txn_seconds = await run_child(path, None)
    assert lines == ["START", "TXN", "COMMITTED", "DONE"]
    assert await reopen(path) == (NEW, before)

    rng = random.Random()
    kills = [("START", 0.0), ("TXN", 0.0)]
    kills += [("TXN", rng.uniform(0, txn_seconds * 1.25)) for _ in range(8)]
    kills += [("COMMITTED", 0.0)]
    outcomes = []
    for run, kill in enumerate(kills):
        path = str(tmp_path / f"run{run}.db")
        shutil.copy(template, path)
        await run_child(path, kill)
        password, after = await reopen(path)
        assert after == before, f"run {run}: killed {kill}, {password!r} opens"
        outcomes.append((kill[0], round(kill[1], 3), "old" if password == OLD else "new"))
    assert outcomes[0][2] == "old"  # killed before the transaction: nothing changed
    assert outcomes[-1][2] == "new"  # killed after the commit: the change holds
    print(f"transaction {txn_seconds:.3f}s; (after, delay, password): {outcomes}")
