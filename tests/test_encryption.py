"""Encryption at rest: the API, the errors, tampering, and changing the password.

What reaches the disk is checked byte by byte in ``test_encryption_at_rest.py``; crashes
during a password change in ``test_encryption_crash.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import p2pdb
from p2pdb.errors import EncryptionError, QueryError, SchemaError, ValidationError
from p2pdb.plugins.encryption import (
    PREFIX,
    EncryptedFieldsCodec,
    FieldCipher,
    ScryptParams,
    associated_data,
    derive_key,
)
from p2pdb.schema import Schema

PW = "correct horse battery staple"
NEW_PW = "new password"

NOTES: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "title": {"type": "string"},
        "n": {"type": "integer"},
        "body": {},
        "meta": {
            "type": "object",
            "properties": {"secret": {}, "owner": {"type": "string"}},
        },
    },
    "required": ["id"],
    "indexes": ["title", "n"],
    "encrypted": ["body", "meta.secret"],
}
PLAIN = {k: v for k, v in NOTES.items() if k != "encrypted"}

VALUES: list[Any] = [
    "my secret",
    "",
    0,
    -1.5,
    2**53 + 1,
    True,
    False,
    None,
    [],
    {},
    [1, "a", {"b": None}],
    {"nested": {"deep": [1, 2.25, "x"]}, "k": True},
    'ünïcødé ✓ 𝄞 \u0000 "quoted" \\ back',
    "x" * 250_000,
]


async def body_of(collection: p2pdb.Collection, doc_id: str) -> Any:
    doc = await collection.find_one(doc_id)
    assert doc is not None, doc_id
    return doc.get("body")


def key_of(stored: str) -> bytes:
    """The key id of a stored ciphertext."""
    return base64.b64decode(stored[len(PREFIX) :])[:4]


def raw_body(path: str, doc_id: str, collection: str = "notes") -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(f'SELECT body FROM "col_{collection}" WHERE id = ?', (doc_id,))
        body: dict[str, Any] = json.loads(row.fetchone()[0])
        return body
    finally:
        conn.close()


def set_raw_body(path: str, doc_id: str, body: dict[str, Any]) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("UPDATE col_notes SET body = ? WHERE id = ?", (json.dumps(body), doc_id))
    finally:
        conn.close()


# -- the issue's example, and round trips --------------------------------------------------


async def test_issue_example(db_path: str) -> None:
    db = await p2pdb.create_database(db_path, password=PW)
    notes = await db.add_collection("notes", schema=NOTES)
    await notes.insert({"id": "n1", "title": "hello", "body": "my secret"})
    doc = await notes.find_one("n1")
    assert doc is not None and doc.to_dict() == {"id": "n1", "title": "hello", "body": "my secret"}
    assert raw_body(db_path, "n1")["body"].startswith(PREFIX)
    await db.change_password(PW, NEW_PW)
    assert await body_of(notes, "n1") == "my secret"
    await db.close()

    async with p2pdb.create_database(db_path, password=NEW_PW) as db2:
        notes2 = await db2.add_collection("notes", schema=NOTES)
        assert await body_of(notes2, "n1") == "my secret"


async def test_every_json_value_round_trips(db_path: str) -> None:
    docs = [
        {"id": f"v{i}", "title": f"t{i}", "n": i, "body": v, "meta": {"secret": v, "owner": "o"}}
        for i, v in enumerate(VALUES)
    ]
    docs.append({"id": "absent", "title": "no encrypted fields at all"})
    docs.append({"id": "no-secret", "meta": {"owner": "only the owner"}})
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        result = await notes.bulk_insert(docs)
        assert not result.errors
        expected = {d["id"]: d for d in docs}
        for d in docs:
            found = await notes.find_one(d["id"])
            assert found is not None and found.to_dict() == d
        by_ids = await notes.find_by_ids(list(expected))
        assert {k: v.to_dict() for k, v in by_ids.items()} == expected
        assert {d.id: d.to_dict() for d in await notes.find()} == expected
        assert [d.id for d in await notes.find({"n": {"$gte": 10}}, sort=[{"n": "desc"}])] == [
            "v13",
            "v12",
            "v11",
            "v10",
        ]
        stored = raw_body(db_path, "v0")
        assert stored["title"] == "t0" and stored["n"] == 0 and stored["meta"]["owner"] == "o"
        assert stored["body"].startswith(PREFIX) and stored["meta"]["secret"].startswith(PREFIX)
        assert raw_body(db_path, "absent") == {
            "id": "absent",
            "title": "no encrypted fields at all",
        }
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        assert {d.id: d.to_dict() for d in await notes.find()} == expected


async def test_changes_carry_clear_documents(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        seen: list[p2pdb.ChangeEvent] = []
        notes.changes.subscribe(seen.append)
        doc = await notes.insert({"id": "a", "body": {"x": 1}})
        await doc.patch({"body": {"x": 2}})
        await doc.remove()
        assert [e.document["body"] for e in seen] == [{"x": 1}, {"x": 2}, {"x": 2}]
        assert seen[1].previous is not None and seen[1].previous["body"] == {"x": 1}
        stored = db.storage.get("notes", ["a"])["a"]
        assert stored["_deleted"] and stored["body"] == {"x": 2}  # tombstones keep fields


async def test_open_as_context_manager_and_await(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        await (await db.add_collection("notes", schema=NOTES)).insert({"id": "a", "body": 1})
    db = await p2pdb.create_database(db_path, password=PW)
    try:
        notes = await db.add_collection("notes", schema=NOTES)
        assert await body_of(notes, "a") == 1
    finally:
        await db.close()


async def test_collections_without_encrypted_fields_skip_the_codec(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        plain = await db.add_collection("plain", schema=PLAIN)
        await plain.insert({"id": "a", "body": "in clear on purpose"})
        assert raw_body(db_path, "a", "plain")["body"] == "in clear on purpose"


# -- passwords -------------------------------------------------------------------------


def file_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def exists(path: str) -> bool:
    return os.path.exists(path)


def wal_size(path: str) -> int:
    return os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0


async def test_wrong_password_is_refused_at_open_and_nothing_changes(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        await (await db.add_collection("notes", schema=NOTES)).insert({"id": "a", "body": "s"})
    before = file_bytes(db_path)
    with pytest.raises(EncryptionError) as info:
        await p2pdb.create_database(db_path, password="not the password")
    assert info.value.code == "ENCRYPTION_WRONG_PASSWORD"
    assert "Wrong password" in str(info.value)
    with pytest.raises(EncryptionError):
        async with p2pdb.create_database(db_path, password="still not it"):
            pass
    assert file_bytes(db_path) == before
    assert wal_size(db_path) == 0


async def test_password_rules(db_path: str) -> None:
    for bad in ("", "short", 12345678, b"bytes-password"):
        with pytest.raises(ValidationError) as info:
            await p2pdb.create_database(db_path, password=bad)
        assert info.value.code == "ENCRYPTION_BAD_PASSWORD"
    assert not exists(db_path)  # checked before the file is created
    async with p2pdb.create_database(db_path, password=PW) as db:
        with pytest.raises(ValidationError) as info:
            await db.change_password(PW, "short")
        assert info.value.code == "ENCRYPTION_BAD_PASSWORD"


async def test_unicode_password_is_normalized(db_path: str) -> None:
    composed, decomposed = "caf\u00e9 au lait", "cafe\u0301 au lait"
    async with p2pdb.create_database(db_path, password=composed) as db:
        await (await db.add_collection("notes", schema=NOTES)).insert({"id": "a", "body": 1})
    async with p2pdb.create_database(db_path, password=decomposed) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        assert await body_of(notes, "a") == 1


async def test_database_created_without_password_refuses_one(db_path: str) -> None:
    async with p2pdb.create_database(db_path) as db:
        await (await db.add_collection("plain", schema=PLAIN)).insert({"id": "a"})
    with pytest.raises(EncryptionError) as info:
        await p2pdb.create_database(db_path, password=PW)
    assert info.value.code == "ENCRYPTION_NOT_ENABLED"
    assert "without a password" in info.value.message
    async with p2pdb.create_database(db_path) as db:
        with pytest.raises(EncryptionError) as info:
            await db.change_password(PW, NEW_PW)
        assert info.value.code == "ENCRYPTION_NOT_ENABLED"


async def test_empty_database_can_get_a_password(db_path: str) -> None:
    async with p2pdb.create_database(db_path):
        pass  # nothing stored yet: nothing to protect
    async with p2pdb.create_database(db_path, password=PW) as db:
        await (await db.add_collection("notes", schema=NOTES)).insert({"id": "a", "body": 1})
    assert raw_body(db_path, "a")["body"].startswith(PREFIX)


async def test_encrypted_database_needs_its_password(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        await db.add_collection("plain", schema=PLAIN)
    async with p2pdb.create_database(db_path) as db:  # no encrypted collection yet: fine
        with pytest.raises(EncryptionError) as info:
            await db.add_collection("notes", schema=NOTES)
        assert info.value.code == "ENCRYPTION_NO_PASSWORD"
    async with p2pdb.create_database(db_path, password=PW) as db:
        await db.add_collection("notes", schema=NOTES)
    with pytest.raises(EncryptionError) as info:
        await p2pdb.create_database(db_path)
    assert info.value.code == "ENCRYPTION_PASSWORD_REQUIRED"
    assert info.value.parameters["collections"] == ["notes"]


async def test_encrypted_schema_without_password(db: p2pdb.Database) -> None:
    with pytest.raises(EncryptionError) as info:
        await db.add_collection("notes", schema=NOTES)
    assert info.value.code == "ENCRYPTION_NO_PASSWORD"
    assert "password=" in info.value.message
    assert "notes" not in db.storage.stored_schemas()  # nothing was created


async def test_concurrent_first_opens_agree_on_one_key(tmp_path: Path) -> None:
    """Two opens racing to create the key record: one creates it, the other uses it."""

    async def race(path: str, passwords: tuple[str, str]) -> list[object]:
        async with p2pdb.create_database(path):
            pass  # the file exists (in WAL mode), with nothing in it yet
        results: list[object] = list(
            await asyncio.gather(
                *(p2pdb.create_database(path, password=pw) for pw in passwords),
                return_exceptions=True,
            )
        )
        return results

    results = await race(str(tmp_path / "same.db"), (PW, PW))
    try:
        first, second = results
        assert isinstance(first, p2pdb.Database) and isinstance(second, p2pdb.Database)
        assert first.storage.get_info("encryption") == second.storage.get_info("encryption")
        notes = await first.add_collection("notes", schema=NOTES)
        await notes.insert({"id": "a", "body": "written by the first"})
        assert await body_of(await second.add_collection("notes", schema=NOTES), "a") == (
            "written by the first"
        )
    finally:
        for result in results:
            if isinstance(result, p2pdb.Database):
                await result.close()

    results = await race(str(tmp_path / "different.db"), (PW, NEW_PW))
    try:
        opened = [r for r in results if isinstance(r, p2pdb.Database)]
        refused = [r for r in results if isinstance(r, EncryptionError)]
        assert len(opened) == 1 and len(refused) == 1, results
        assert refused[0].code == "ENCRYPTION_WRONG_PASSWORD"
    finally:
        for result in results:
            if isinstance(result, p2pdb.Database):
                await result.close()


async def test_key_record(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        record = json.loads(db.storage.get_info("encryption") or "")
        assert record["kdf"] == "scrypt" and record["n"] >= 2**15
        assert (record["r"], record["p"]) == (8, 1)
        assert len(base64.b64decode(record["salt"])) == 16
        assert PW not in json.dumps(record)
        await db.change_password(PW, NEW_PW)
        changed = json.loads(db.storage.get_info("encryption") or "")
        assert changed["salt"] != record["salt"] and changed["key_id"] != record["key_id"]


async def test_damaged_key_record(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW):
        pass
    conn = sqlite3.connect(db_path)
    record = json.loads(
        conn.execute("SELECT value FROM p2pdb_info WHERE key='encryption'").fetchone()[0]
    )
    for damage in ({"n": 2**40}, {"n": 1024}, {"kdf": "md5"}, {"salt": "!!"}, {"version": 9}):
        with conn:
            conn.execute(
                "UPDATE p2pdb_info SET value = ? WHERE key = 'encryption'",
                (json.dumps({**record, **damage}),),
            )
        with pytest.raises(EncryptionError) as info:
            await p2pdb.create_database(db_path, password=PW)
        assert info.value.code == "ENCRYPTION_BAD_KEY_RECORD", damage
    conn.close()


# -- schema and query rules --------------------------------------------------------------


def test_schema_refuses_encrypted_indexes_keys_and_nesting() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({**NOTES, "indexes": ["body"]}, "SCHEMA_ENCRYPTED_INDEX"),
        ({**NOTES, "indexes": [["title", "body"]]}, "SCHEMA_ENCRYPTED_INDEX"),
        ({**NOTES, "indexes": ["meta.secret"]}, "SCHEMA_ENCRYPTED_INDEX"),
        ({**NOTES, "indexes": ["meta"]}, "SCHEMA_ENCRYPTED_INDEX"),
        ({**NOTES, "encrypted": ["meta"], "indexes": ["meta.owner"]}, "SCHEMA_ENCRYPTED_INDEX"),
        ({**NOTES, "encrypted": ["id"]}, "SCHEMA_ENCRYPTED_PRIMARY_KEY"),
        ({**NOTES, "encrypted": ["meta", "meta.secret"]}, "SCHEMA_BAD_ENCRYPTED"),
        ({**NOTES, "encrypted": ["body", "body"]}, "SCHEMA_BAD_ENCRYPTED"),
        ({**NOTES, "encrypted": ["nope"]}, "SCHEMA_BAD_ENCRYPTED"),
        ({**NOTES, "encrypted": "body"}, "SCHEMA_BAD_ENCRYPTED"),
    ]
    for raw, code in cases:
        with pytest.raises(SchemaError) as info:
            Schema(raw)
        assert info.value.code == code, raw
    with pytest.raises(SchemaError) as info:
        Schema({**NOTES, "indexes": ["body"]})
    assert "ciphertext" in info.value.message and "indexes" in info.value.message
    Schema({**NOTES, "encrypted": ["meta.secret"], "indexes": ["meta.owner"]})  # siblings: fine


async def test_encrypted_fields_cannot_be_queried(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        await notes.insert({"id": "a", "title": "t", "body": "b", "meta": {"secret": 1}})
        attempts = [
            lambda: notes.find({"body": "b"}),
            lambda: notes.find({"meta.secret": 1}),
            lambda: notes.find({"meta": {"secret": 1}}),
            lambda: notes.find({"$or": [{"title": "t"}, {"body": {"$regex": "b"}}]}),
            lambda: notes.find(sort=[{"body": "asc"}]),
            lambda: notes.find_one({"body": "b"}),
            lambda: notes.count({"meta.secret": {"$gt": 0}}),
        ]
        for attempt in attempts:
            with pytest.raises(QueryError) as info:
                await attempt()
            assert info.value.code == "QUERY_ENCRYPTED_FIELD"
            assert "encrypted" in info.value.message
        found = await notes.find({"title": "t", "meta.owner": {"$exists": False}})
        assert [d.get("body") for d in found] == ["b"]


# -- tampering -----------------------------------------------------------------------------


def flip_byte(ciphertext: str, at: int) -> str:
    blob = bytearray(base64.b64decode(ciphertext[len(PREFIX) :]))
    blob[at] ^= 0x01
    return PREFIX + base64.b64encode(bytes(blob)).decode()


async def test_tampering_is_detected(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        await notes.bulk_insert(
            [{"id": i, "body": f"secret {i}", "meta": {"secret": i}} for i in ("a", "b", "c")]
        )
    original = raw_body(db_path, "a")
    other = raw_body(db_path, "b")
    blob_len = len(base64.b64decode(original["body"][len(PREFIX) :]))
    attacks: dict[str, tuple[dict[str, Any], str]] = {
        "flipped ciphertext byte": ({**original, "body": flip_byte(original["body"], 20)}, "body"),
        "flipped nonce byte": ({**original, "body": flip_byte(original["body"], 5)}, "body"),
        "flipped tag byte": (
            {**original, "body": flip_byte(original["body"], blob_len - 1)},
            "body",
        ),
        "copied from another document": ({**original, "body": other["body"]}, "body"),
        "copied from another field": (
            {**original, "meta": {"secret": original["body"]}},
            "meta.secret",
        ),
        "plaintext put in its place": ({**original, "body": "forged"}, "body"),
        "not a string": ({**original, "body": 42}, "body"),
        "truncated": ({**original, "body": original["body"][:30]}, "body"),
        "bad base64": ({**original, "body": PREFIX + "***"}, "body"),
    }
    for name, (forged, field) in attacks.items():
        set_raw_body(db_path, "a", forged)
        async with p2pdb.create_database(db_path, password=PW) as db:
            notes = await db.add_collection("notes", schema=NOTES)
            # a query leaves the damaged row out; reading it by id raises
            assert [d.id for d in await notes.find()] == ["b", "c"], name
            for read in ("find_one", "find_by_ids"):
                with pytest.raises(EncryptionError) as info:
                    if read == "find_one":
                        await notes.find_one("a")
                    else:
                        await notes.find_by_ids(["a"])
                error = info.value
                assert error.code == "ENCRYPTION_TAMPERED", name
                assert error.parameters == {
                    "collection": "notes",
                    "document_id": "a",
                    "field": field,
                }
                assert repr("a") in error.message and repr(field) in error.message
            assert await body_of(notes, "b") == "secret b"
    set_raw_body(db_path, "a", original)
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        assert await body_of(notes, "a") == "secret a"


async def test_a_damaged_document_can_be_overwritten(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        await notes.insert({"id": "a", "body": "first"})
    set_raw_body(db_path, "a", {**raw_body(db_path, "a"), "body": "forged"})
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        with pytest.raises(EncryptionError):
            await notes.find_one("a")
        await notes.upsert({"id": "a", "body": "restored"})
        doc = await notes.find_one("a")
        assert doc is not None and doc.get("body") == "restored" and doc.revision.startswith("2-")


# -- changing the password ------------------------------------------------------------------


async def test_change_password_reencrypts_everything(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        diary = await db.add_collection("diary", schema=NOTES)
        await notes.bulk_insert(
            [{"id": f"n{i}", "body": i, "meta": {"secret": [i]}} for i in range(1200)]
        )
        await diary.insert({"id": "d", "body": "dear diary"})
        removed = await notes.find_one("n7")
        assert removed is not None
        await removed.remove()
        before = db.storage.get("notes", [f"n{i}" for i in range(1200)])
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)  # diary not opened this time
        key_before = key_of(raw_body(db_path, "n1")["body"])
        await db.change_password(PW, NEW_PW)
        assert key_of(raw_body(db_path, "n1")["body"]) != key_before
        assert db.storage.get("notes", list(before)) == before  # revisions kept, values equal
        await notes.insert({"id": "after", "body": "written with the new key"})
    with pytest.raises(EncryptionError) as info:
        await p2pdb.create_database(db_path, password=PW)
    assert info.value.code == "ENCRYPTION_WRONG_PASSWORD"
    async with p2pdb.create_database(db_path, password=NEW_PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        diary = await db.add_collection("diary", schema=NOTES)
        assert db.storage.get("notes", list(before)) == before
        assert await body_of(diary, "d") == "dear diary"
        assert await body_of(notes, "after") == "written with the new key"
        await db.change_password(NEW_PW, PW)  # and back
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        assert db.storage.get("notes", list(before)) == before


async def test_change_password_with_wrong_old_changes_nothing(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        await notes.insert({"id": "a", "body": "s"})
        record = db.storage.get_info("encryption")
        body = raw_body(db_path, "a")
        with pytest.raises(EncryptionError) as info:
            await db.change_password("not the old one", NEW_PW)
        assert info.value.code == "ENCRYPTION_WRONG_PASSWORD"
        assert db.storage.get_info("encryption") == record
        assert raw_body(db_path, "a") == body
        assert await body_of(notes, "a") == "s"
        await notes.insert({"id": "b", "body": "still the old key"})
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        assert len(await notes.find()) == 2


async def test_writes_racing_a_password_change(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        await notes.bulk_insert([{"id": f"n{i}", "body": i} for i in range(500)])

        async def writer() -> None:
            for i in range(60):
                await notes.upsert({"id": f"w{i}", "body": f"during {i}"})
                assert await body_of(notes, f"n{i}") == i
                await asyncio.sleep(0)

        await asyncio.gather(writer(), db.change_password(PW, NEW_PW), writer())
        assert len(await notes.find()) == 560
    async with p2pdb.create_database(db_path, password=NEW_PW) as db:
        notes = await db.add_collection("notes", schema=NOTES)
        docs = {d.id: d.get("body") for d in await notes.find()}
        assert docs == {
            **{f"n{i}": i for i in range(500)},
            **{f"w{i}": f"during {i}" for i in range(60)},
        }


async def test_password_changed_by_another_database_object(db_path: str) -> None:
    async with p2pdb.create_database(db_path, password=PW) as first:
        notes1 = await first.add_collection("notes", schema=NOTES)
        await notes1.insert({"id": "a", "body": "s"})
        async with p2pdb.create_database(db_path, password=PW) as second:
            notes2 = await second.add_collection("notes", schema=NOTES)
            await first.change_password(PW, NEW_PW)
            with pytest.raises(EncryptionError) as info:
                await notes2.find_one("a")
            assert info.value.code == "ENCRYPTION_KEY_CHANGED"
            assert info.value.parameters["document_id"] == "a"
            with pytest.raises(EncryptionError) as info:
                await notes2.insert({"id": "b", "body": "would be under the old key"})
            assert info.value.code == "ENCRYPTION_KEY_CHANGED"
            assert "open it again" in info.value.message
            with pytest.raises(EncryptionError) as info:
                await second.change_password(PW, "yet another password")
            assert info.value.code == "ENCRYPTION_KEY_CHANGED"
        await notes1.insert({"id": "c", "body": "fine"})
        assert sorted(d.id for d in await notes1.find()) == ["a", "c"]


# -- the codec on its own (for other storages) ------------------------------------------------


def test_codec_for_custom_storages() -> None:
    key = derive_key(PW, ScryptParams.generate())
    assert len(key) == 32
    codec = EncryptedFieldsCodec(FieldCipher(key), ["body", "meta.secret"])
    body = {"id": "n1", "body": "my secret", "meta": {"secret": {"a": 1}, "owner": "me"}}
    stored = codec.encode("notes", "n1", body)
    assert body == {"id": "n1", "body": "my secret", "meta": {"secret": {"a": 1}, "owner": "me"}}
    assert stored["meta"]["owner"] == "me" and stored["body"].startswith(PREFIX)
    assert codec.decode("notes", "n1", stored) == body
    assert codec.encode("notes", "n1", body)["body"] != stored["body"]  # fresh nonce
    for collection, doc_id in (("other", "n1"), ("notes", "n2")):
        with pytest.raises(EncryptionError) as info:
            codec.decode(collection, doc_id, stored)
        assert info.value.code == "ENCRYPTION_TAMPERED"
    with pytest.raises(EncryptionError) as info:
        EncryptedFieldsCodec(FieldCipher(bytes(32)), ["body"]).decode("notes", "n1", stored)
    assert info.value.code == "ENCRYPTION_KEY_CHANGED"
    assert associated_data("notes", "body", "n1") != associated_data("notes", "body", "n1\x00")
    for paths in (["a", "a.b"], ["a", "a"], ["a..b"]):
        with pytest.raises(ValidationError) as vinfo:
            EncryptedFieldsCodec(FieldCipher(key), paths)
        assert vinfo.value.code == "ENCRYPTION_BAD_PATHS"
    with pytest.raises(ValidationError) as vinfo:
        FieldCipher(b"too short")
    assert vinfo.value.code == "ENCRYPTION_BAD_KEY"


def test_key_derivation_is_salted_and_slow_enough() -> None:
    params = ScryptParams.generate()
    assert params.n >= 2**15 and (params.r, params.p) == (8, 1) and len(params.salt) == 16
    again = ScryptParams.generate()
    assert params.salt != again.salt
    assert derive_key(PW, params) != derive_key(PW, again)
    assert derive_key(PW, params) == derive_key(PW, ScryptParams.from_json(params.to_json()))


def test_nonces_are_fresh_across_threads_and_forks() -> None:
    cipher = FieldCipher(bytes(range(32)))
    values: list[str] = []

    def work() -> None:
        values.extend(cipher.encrypt("same", b"ad") for _ in range(2000))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    nonces = {base64.b64decode(v[len(PREFIX) :])[4:16] for v in values}
    assert len(nonces) == len(values) == 8000

    # a forked child must not reuse the nonces its parent had drawn but not used yet
    cipher.encrypt("fill the pool", b"ad")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write_end, cipher.encrypt("child", b"ad").encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = os.read(read_end, 1000).decode()
    os.close(read_end)
    parent = cipher.encrypt("parent", b"ad")
    assert base64.b64decode(child[5:])[4:16] != base64.b64decode(parent[5:])[4:16]


def test_core_does_not_load_the_plugin() -> None:
    code = (
        "import sys, p2pdb; "
        "loaded = [m for m in sys.modules if m.startswith('p2pdb.plugins')]; "
        "assert not loaded, loaded"
    )
    root = str(Path(p2pdb.__file__).parent.parent)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
