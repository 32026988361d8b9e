"""Nothing secret reaches the disk: the raw bytes of the SQLite files (main file and WAL)
are searched for distinctive plaintext markers after inserts, updates, deletes and a
two-way replication between two databases with different passwords.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

from replication_helpers import contents, wait_equal

import p2pdb
from p2pdb.plugins.encryption import PREFIX
from p2pdb.replication import collection_handler, replicate

PW_A = "password of peer a"
PW_B = "peer b has another one"

NOTES: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "title": {"type": "string"},
        "body": {},
        "meta": {"type": "object", "properties": {"secret": {}, "owner": {"type": "string"}}},
    },
    "required": ["id"],
    "indexes": ["title"],
    "encrypted": ["body", "meta.secret"],
}


class Secrets:
    """Distinctive plaintexts, each used once, remembered for the search."""

    def __init__(self) -> None:
        self.used: list[bytes] = []
        self.count = 0

    def _new(self, kind: str) -> str:
        self.count += 1
        return f"QZ{kind}{self.count:05d}XJ"

    def value(self, kind: str) -> Any:
        """A secret value of varied JSON shape, every marker in it recorded."""
        text, key, word = self._new(kind), self._new("KEY"), self._new("ÜBERGEHEIM")
        number = 7_391_846_250_000 + self.count
        self.used += [text.encode(), key.encode(), word.encode(), str(number).encode()]
        return {"text": text, key: [number, word], "note": f"padding {text} " * 20}


def scan(folder: Path, stem: str, markers: list[bytes]) -> tuple[list[bytes], int]:
    """Markers found in any file of the database (main, -wal, -shm), and bytes searched."""
    data = b"".join(p.read_bytes() for p in sorted(folder.glob(stem + "*")))
    return [m for m in markers if m in data], len(data)


def file_names(folder: Path, stem: str) -> list[str]:
    return sorted(p.name for p in folder.glob(stem + "*"))


def stored(path: Path, sql: str, *params: Any) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def key_id(value: str) -> bytes:
    assert value.startswith(PREFIX), value[:40]
    return base64.b64decode(value[len(PREFIX) :])[:4]


async def test_nothing_secret_on_disk_across_writes_deletes_and_replication(
    tmp_path: Path,
) -> None:
    secrets = Secrets()
    titles = [f"QZTITLE{i:03d}XJ" for i in range(40)]  # not encrypted: the control
    db_a = await p2pdb.create_database(str(tmp_path / "a.db"), password=PW_A)
    db_b = await p2pdb.create_database(str(tmp_path / "b.db"), password=PW_B)
    try:
        a = await db_a.add_collection("notes", schema=NOTES)
        b = await db_b.add_collection("notes", schema=NOTES)
        await a.bulk_insert(
            [
                {
                    "id": f"a{i}",
                    "title": titles[i],
                    "body": secrets.value("BODY"),
                    "meta": {"secret": secrets.value("META"), "owner": "alice"},
                }
                for i in range(40)
            ]
        )
        state = replicate(b, collection_handler(a), "a-to-b", retry_delay=0.05)
        async with state:
            await state.wait_for_in_sync()
            for i in range(10):  # updates on both sides
                doc = await a.find_one(f"a{i}")
                assert doc is not None
                await doc.patch({"body": secrets.value("UPDATE")})
                doc = await b.find_one(f"a{i + 10}")
                assert doc is not None
                await doc.patch({"meta": {"secret": secrets.value("BUPDATE")}})
            await a.remove({"id": {"$in": [f"a{i}" for i in range(20, 30)]}})
            await b.bulk_insert(
                [{"id": f"b{i}", "body": secrets.value("FROMB")} for i in range(10)]
            )
            await wait_equal(a, b)
            await state.wait_for_in_sync()
            assert await contents(a) == await contents(b)
            assert len(await contents(a)) == 40
            tombstone = db_a.storage.get("notes", ["a20"])["a20"]
            assert tombstone["_deleted"] and tombstone["body"]["text"].startswith("QZBODY")

            # each peer encrypts with its own key
            (body_a,) = stored(tmp_path / "a.db", "SELECT body FROM col_notes WHERE id='a0'")[0]
            (body_b,) = stored(tmp_path / "b.db", "SELECT body FROM col_notes WHERE id='a0'")[0]
            assert key_id(json.loads(body_a)["body"]) != key_id(json.loads(body_b)["body"])
            # tombstones keep their fields, encrypted
            (dead,) = stored(tmp_path / "a.db", "SELECT body FROM col_notes WHERE id='a20'")[0]
            key_id(json.loads(dead)["meta"]["secret"])

            # the fork's assumed master states are markers (a revision of the fork's own,
            # encrypted row) or whole documents: encrypted too
            meta = stored(
                tmp_path / "b.db",
                "SELECT item, value FROM p2pdb_replication WHERE item LIKE 'doc:%'",
            )
            assert len(meta) >= 50
            for item, value in meta:
                doc = json.loads(value)
                if isinstance(doc, str):
                    assert doc.split("-", 1)[0].isdigit(), doc
                    continue
                assert doc["id"] == item[4:]
                key_id(doc["body"])
            decoded = db_b.storage.get_assumed("notes", "a-to-b", ["a0", "b0"])
            assert decoded["a0"]["body"] == (await contents(a))["a0"]["body"]
            assert decoded["b0"]["body"]["text"].startswith("QZFROMB")

            # 1) while open: the WAL holds the recent pages
            assert any(n.endswith("-wal") for n in file_names(tmp_path, "a.db"))
            for stem in ("a.db", "b.db"):
                found, size = scan(tmp_path, stem, secrets.used)
                assert found == [], (stem, found[:5])
                assert size > 100_000
            titles_seen, _ = scan(tmp_path, "a.db", [t.encode() for t in titles])
            assert len(titles_seen) == 40  # the search does see what is stored in clear

            # 2) after a checkpoint copied the WAL into the main file
            for stem in ("a.db", "b.db"):
                checkpoint(tmp_path / stem)
                found, _ = scan(tmp_path, stem, secrets.used)
                assert found == [], (stem, found[:5])
    finally:
        await db_a.close()
        await db_b.close()

    # 3) closed: everything is in the main file
    assert file_names(tmp_path, "a.db") == ["a.db"]
    for stem in ("a.db", "b.db"):
        found, _ = scan(tmp_path, stem, secrets.used)
        assert found == [], (stem, found[:5])
    assert len(secrets.used) == 4 * (80 + 10 + 10 + 10)


async def test_replicated_data_reads_back_under_each_password(tmp_path: Path) -> None:
    """After the replication, each file opens with its own password only."""
    db_a = await p2pdb.create_database(str(tmp_path / "a.db"), password=PW_A)
    db_b = await p2pdb.create_database(str(tmp_path / "b.db"), password=PW_B)
    try:
        a = await db_a.add_collection("notes", schema=NOTES)
        b = await db_b.add_collection("notes", schema=NOTES)
        await a.insert({"id": "x", "body": "from a"})
        await b.insert({"id": "y", "body": "from b"})
        async with replicate(b, collection_handler(a), "r", live=False) as state:
            await state.wait_for_initial_replication()
    finally:
        await db_a.close()
        await db_b.close()
    for name, password, other in (("a.db", PW_A, PW_B), ("b.db", PW_B, PW_A)):
        path = str(tmp_path / name)
        try:
            await p2pdb.create_database(path, password=other)
            raise AssertionError("the other peer's password opened the file")
        except p2pdb.EncryptionError as exc:
            assert exc.code == "ENCRYPTION_WRONG_PASSWORD"
        async with p2pdb.create_database(path, password=password) as db:
            notes = await db.add_collection("notes", schema=NOTES)
            assert {d.id: d.get("body") for d in await notes.find()} == {
                "x": "from a",
                "y": "from b",
            }
