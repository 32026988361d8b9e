"""Child of tests/test_disk_full.py: runs inside its own mount namespace, with ``DIR`` a
16 MB tmpfs that only this process sees, and fills it up.

    python disk_full_child.py DIR MASTER_DIR plain|encrypted

1. Single inserts of ~3 KB until the disk is full (each one that returns is "acknowledged"),
   then a bulk insert that cannot fit: both must fail with ``STORAGE_FULL``; reads go on.
2. A little space is freed (a slack file) and a replication starts pulling 400 documents
   from a master on another disk: it fills the disk again mid-way (``STORAGE_FULL`` on
   ``state.errors``, retried).
3. The big filler file is deleted: a write succeeds without reopening, and the replication
   completes.
4. Reopened: every acknowledged write is there, ``PRAGMA integrity_check`` is ``ok``.

Prints one JSON line with what happened; the parent test asserts on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from typing import Any

import p2pdb
from p2pdb.errors import StorageError
from p2pdb.replication import collection_handler, replicate
from p2pdb.replication.testing import WirePipe

PW = "correct horse battery staple"
SLACK = 400_000  # bytes freed before the replication starts: some batches fit, not all
MASTER_DOCS = 400


def schema(encrypted: bool) -> dict[str, Any]:
    return {
        "version": 0,
        "primaryKey": "id",
        "type": "object",
        "properties": {
            "id": {"type": "string", "maxLength": 100},
            "text": {"type": "string"},
        },
        **({"encrypted": ["text"]} if encrypted else {}),
    }


def fill(path: str, size: int) -> None:
    with open(path, "wb") as f:
        remaining = size
        while remaining > 0:
            chunk = min(remaining, 65536)
            try:
                f.write(b"\0" * chunk)
                f.flush()
            except OSError:
                break
            remaining -= chunk


async def main(folder: str, master_folder: str, mode: str) -> dict[str, Any]:
    encrypted = mode == "encrypted"
    password = PW if encrypted else None
    path = os.path.join(folder, "app.db")
    out: dict[str, Any] = {"mode": mode}
    master_db = await p2pdb.create_database(os.path.join(master_folder, "master.db"))
    master = await master_db.add_collection("docs", schema=schema(False))
    await master.bulk_insert(
        [{"id": f"m{i:03}", "text": f"{i}:" + "m" * 2000} for i in range(MASTER_DOCS)]
    )

    db = await p2pdb.create_database(path, password=password)
    docs = await db.add_collection("docs", schema=schema(encrypted))
    pulled = await db.add_collection("pulled", schema=schema(encrypted))
    acked: list[str] = []
    for i in range(20):  # some data before the disk fills up
        await docs.insert({"id": f"pre{i}", "text": "p" * 3000})
        acked.append(f"pre{i}")

    # 1. fill the disk: a slack file (freed in step 2) and a filler taking the rest
    fill(os.path.join(folder, "slack"), SLACK)
    stat = os.statvfs(folder)
    fill(os.path.join(folder, "filler"), stat.f_bavail * stat.f_frsize - 300_000)
    errors: list[StorageError] = []
    for i in range(10_000):
        try:
            await docs.insert({"id": f"w{i}", "text": f"{i}:" + "w" * 3000})
        except StorageError as exc:
            errors.append(exc)
            break
        acked.append(f"w{i}")
    bulk_ids = [f"bulk{i}" for i in range(60)]
    try:
        await docs.bulk_insert([{"id": i, "text": "b" * 3000} for i in bulk_ids])
        out["bulk_stored"] = True
    except StorageError as exc:
        errors.append(exc)
        out["bulk_stored"] = False
    out["full_errors"] = [[e.code, e.message, e.parameters.get("sqlite_error")] for e in errors]
    out["acked_while_filling"] = len(acked) - 20
    out["count_while_full"] = await docs.count()
    out["bulk_present_while_full"] = len(await docs.find_by_ids(bulk_ids))
    out["read_while_full"] = (await docs.find_one(acked[-1])) is not None

    # 2. free a little; a replication fills the disk again mid-way
    os.remove(os.path.join(folder, "slack"))
    replication_errors: list[str] = []
    full_again = asyncio.Event()

    def on_error(error: Exception) -> None:
        replication_errors.append(getattr(error, "code", type(error).__name__))
        if getattr(error, "code", None) == "STORAGE_FULL":
            full_again.set()

    async with WirePipe(collection_handler(master)) as pipe:
        state = replicate(
            pulled, pipe.handler, "master", batch_size=20, retry_delay=0.05, max_retry_delay=0.2
        )
        state.errors.subscribe(on_error)
        async with asyncio.timeout(60):
            await full_again.wait()
        out["pulled_when_full"] = await pulled.count()

        # 3. free the space: the same database objects work again
        os.remove(os.path.join(folder, "filler"))
        await docs.insert({"id": "after", "text": "a" * 3000})
        acked.append("after")
        async with asyncio.timeout(60):
            await state.wait_for_in_sync()
        out["pulled_after"] = await pulled.count()
        await state.cancel()
    out["replication_errors"] = sorted(set(replication_errors))
    await db.close()
    await master_db.close()

    # 4. reopen: nothing acknowledged is lost, the file is sound
    async with p2pdb.create_database(path, password=password) as db:
        docs = await db.add_collection("docs", schema=schema(encrypted))
        pulled = await db.add_collection("pulled", schema=schema(encrypted))
        found = await docs.find_by_ids(acked)
        out["acked"] = len(acked)
        out["acked_missing"] = sorted(set(acked) - set(found))
        out["bad_values"] = [i for i, d in found.items() if not d.get("text")]
        out["pulled_reopened"] = await pulled.count()
        out["bulk_present_after"] = len(await docs.find_by_ids(bulk_ids))
    conn = sqlite3.connect(path)
    try:
        out["integrity"] = conn.execute("PRAGMA integrity_check").fetchall()[0][0]
    finally:
        conn.close()
    return out


if __name__ == "__main__":
    import faulthandler

    faulthandler.dump_traceback_later(120, exit=True)  # never hang the suite
    result = asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
    print(json.dumps(result))
