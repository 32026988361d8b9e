"""One damaged (tampered) row: the rest of its collection stays readable and replicable.

A row is damaged with plain ``sqlite3`` on the file (a flipped byte of an encrypted value),
as a disk fault or an attacker would; then queries, counts, reads by other ids and
replication over the in-memory pipe go on, the damaged id is listed by
``collection.damaged()`` and reported once in the log, and ``collection.repair()`` either
overwrites it or removes it so a peer's copy comes back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import p2pdb
from p2pdb.errors import EncryptionError, NotFoundError, ValidationError
from p2pdb.plugins.encryption import PREFIX
from p2pdb.replication import collection_handler, replicate
from p2pdb.replication.testing import WirePipe

PW = "correct horse battery staple"
SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "n": {"type": "integer"},
        "body": {"type": "string"},
    },
    "indexes": ["n"],
    "encrypted": ["body"],
}
DOCS = [{"id": f"d{i:02}", "n": i, "body": f"secret {i}"} for i in range(40)]
DAMAGED = "d07"

Open = Callable[[str], Awaitable[p2pdb.Collection]]


@pytest.fixture
async def open_notes(tmp_path: Path) -> AsyncIterator[Open]:
    dbs: list[p2pdb.Database] = []

    async def make(name: str) -> p2pdb.Collection:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"), password=PW)
        dbs.append(db)
        return await db.add_collection("notes", schema=SCHEMA)

    yield make
    for db in dbs:
        await db.close()


def tamper(path: str, doc_id: str) -> None:
    """Flip one ciphertext byte of the stored ``body`` of ``doc_id``, with plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            (raw,) = conn.execute("SELECT body FROM col_notes WHERE id = ?", (doc_id,)).fetchone()
            body = json.loads(raw)
            blob = bytearray(base64.b64decode(body["body"][len(PREFIX) :]))
            blob[20] ^= 0x01
            body["body"] = PREFIX + base64.b64encode(bytes(blob)).decode()
            conn.execute(
                "UPDATE col_notes SET body = ? WHERE id = ?", (json.dumps(body), doc_id)
            )
    finally:
        conn.close()


def damage_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "ENCRYPTION_TAMPERED" in r.getMessage()]


async def test_the_rest_of_the_collection_is_read_and_replicated(
    open_notes: Open, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="p2pdb")
    notes = await open_notes("a")
    await notes.bulk_insert(DOCS)
    tamper(notes.storage.path, DAMAGED)
    others = [d["id"] for d in DOCS if d["id"] != DAMAGED]

    assert [d.id for d in await notes.find()] == others
    assert [d.id for d in await notes.find(sort=[{"n": "desc"}])] == others[::-1]
    # a page the damaged row took a place on is read on past it: still full
    page = await notes.find({"n": {"$gte": 5}}, sort=[{"n": "asc"}], limit=5)
    assert [d.get("n") for d in page] == [5, 6, 8, 9, 10]
    assert [d.id for d in await notes.find(skip=6, limit=2)] == others[6:8]
    first = await notes.find_one({"n": {"$gte": 7}})
    assert first is not None and first.id == "d08"
    doc = await notes.find_one("d08")
    assert doc is not None and doc.get("body") == "secret 8"
    assert set(await notes.find_by_ids(["d01", "d39"])) == {"d01", "d39"}
    assert await notes.count() == len(DOCS)  # counts do not decrypt: the row is still stored
    for read in (lambda: notes.find_one(DAMAGED), lambda: notes.find_by_ids([DAMAGED, "d01"])):
        with pytest.raises(EncryptionError) as info:
            await read()
        assert info.value.code == "ENCRYPTION_TAMPERED"
        assert info.value.parameters == {
            "collection": "notes",
            "document_id": DAMAGED,
            "field": "body",
        }
    records = damage_records(caplog)
    assert len(records) == 1, "reported once, however often it is read"
    assert records[0].levelno == logging.WARNING and repr(DAMAGED) in records[0].getMessage()
    error = getattr(records[0], "p2pdb_error", None)
    assert isinstance(error, EncryptionError) and error.parameters["document_id"] == DAMAGED

    (listed,) = await notes.damaged()
    assert (listed.id, listed.deleted, listed.field) == (DAMAGED, False, "body")
    assert listed.error.code == "ENCRYPTION_TAMPERED"

    # a master serving changes skips it (the batch is filled up behind it) ...
    fork = await open_notes("fork")
    async with WirePipe(collection_handler(notes)) as pipe:
        async with replicate(fork, pipe.handler, "from-a", batch_size=7, live=False) as state:
            await state.wait_for_in_sync()
        assert pipe.errors == []
    assert [d.id for d in await fork.find()] == others
    # ... and a fork pushing its changes too
    master = await open_notes("master")
    async with WirePipe(collection_handler(master)) as pipe:
        async with replicate(notes, pipe.handler, "to-m", batch_size=7, live=False) as state:
            await state.wait_for_in_sync()
        assert pipe.errors == []
    assert [d.id for d in await master.find()] == others
    assert len(damage_records(caplog)) == 1


async def test_repair_removes_the_row_and_a_peer_delivers_it_again(open_notes: Open) -> None:
    peer = await open_notes("peer")
    await peer.bulk_insert(DOCS)
    notes = await open_notes("a")
    async with WirePipe(collection_handler(peer)) as pipe:
        async with replicate(notes, pipe.handler, "peer", live=False) as state:
            await state.wait_for_in_sync()
    assert await notes.count() == len(DOCS)
    tamper(notes.storage.path, DAMAGED)
    assert [d.id for d in await notes.damaged()] == [DAMAGED]
    with pytest.raises(ValidationError) as info:
        await notes.repair("d01")  # not damaged: never removed
    assert info.value.code == "DOCUMENT_NOT_DAMAGED"
    with pytest.raises(NotFoundError) as missing:
        await notes.repair("nope")
    assert missing.value.code == "DOCUMENT_NOT_FOUND"

    events: list[p2pdb.ChangeEvent] = []
    notes.changes.subscribe(events.append)
    assert await notes.repair(DAMAGED) is None
    assert events == [], "the row is removed, no tombstone is written (it would travel)"
    assert await notes.find_one(DAMAGED) is None
    assert await notes.damaged() == []
    async with WirePipe(collection_handler(peer)) as pipe:
        async with replicate(notes, pipe.handler, "peer", live=False) as state:
            await state.wait_for_in_sync()
    doc = await notes.find_one(DAMAGED)
    assert doc is not None and doc.get("body") == "secret 7"
    assert [e.id for e in events] == [DAMAGED]  # only the missing one was written again
    # the peer's copy was never touched
    good = await peer.find_one(DAMAGED)
    assert good is not None and good.revision.startswith("1-")


async def test_repair_with_a_replacement_overwrites_and_replicates(open_notes: Open) -> None:
    notes = await open_notes("a")
    await notes.bulk_insert(DOCS)
    fork = await open_notes("fork")
    async with WirePipe(collection_handler(notes)) as pipe:
        async with replicate(fork, pipe.handler, "live") as state:
            await state.wait_for_in_sync()
            tamper(notes.storage.path, DAMAGED)
            with pytest.raises(ValidationError) as info:
                await notes.repair(DAMAGED, replacement={"id": "other", "body": "x"})
            assert info.value.code == "DOCUMENT_PRIMARY_KEY_CHANGED"
            arrived = asyncio.Event()  # the master's stream event is still on its way after
            state.received.subscribe(lambda doc: doc["id"] == DAMAGED and arrived.set())
            fixed = await notes.repair(DAMAGED, replacement={"id": DAMAGED, "body": "restored"})
            assert fixed is not None and fixed.revision.startswith("2-")
            assert await notes.damaged() == []
            await asyncio.wait_for(arrived.wait(), 10)
            copy = await fork.find_one(DAMAGED)
            assert copy is not None and copy.get("body") == "restored"
    doc = await notes.find_one(DAMAGED)
    assert doc is not None and doc.get("body") == "restored"


async def test_a_fork_pushing_the_document_repairs_the_master(open_notes: Open) -> None:
    notes = await open_notes("a")
    await notes.bulk_insert(DOCS)
    fork = await open_notes("fork")
    async with WirePipe(collection_handler(notes)) as pipe:
        async with replicate(fork, pipe.handler, "live") as state:
            await state.wait_for_in_sync()
            tamper(notes.storage.path, DAMAGED)
            copy = await fork.find_one(DAMAGED)
            assert copy is not None
            await copy.patch({"body": "edited on the fork"})
            async with asyncio.timeout(20):  # a push failing on the damaged row never syncs
                await state.wait_for_in_sync()
        assert pipe.errors == []
    assert await notes.damaged() == []
    doc = await notes.find_one(DAMAGED)
    assert doc is not None and doc.get("body") == "edited on the fork"


async def test_a_pull_of_the_document_repairs_the_fork(open_notes: Open) -> None:
    peer = await open_notes("peer")
    await peer.bulk_insert(DOCS)
    notes = await open_notes("a")
    async with WirePipe(collection_handler(peer)) as pipe:
        async with replicate(notes, pipe.handler, "peer") as state:
            await state.wait_for_in_sync()
            tamper(notes.storage.path, DAMAGED)
            newer = await peer.find_one(DAMAGED)
            assert newer is not None
            arrived = asyncio.Event()
            sub = notes.changes.subscribe(lambda e: e.id == DAMAGED and arrived.set())
            await newer.patch({"body": "edited on the master"})
            async with asyncio.timeout(20):  # the pull writes over the damaged row
                await arrived.wait()
            sub.dispose()
            assert pipe.errors == [] and await notes.damaged() == []
    doc = await notes.find_one(DAMAGED)
    assert doc is not None and doc.get("body") == "edited on the master"
