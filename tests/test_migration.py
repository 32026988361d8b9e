"""Schema migration: ``add_collection(name, schema=vN, migration_strategies={...})``, on real
SQLite files (docs/migration.md)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

import p2pdb
from p2pdb.errors import P2PDBError, SchemaError
from p2pdb.migration import MigrationProgress, migration_progress
from p2pdb.replication import collection_handler, replicate
from p2pdb.replication.testing import WirePipe

Doc = dict[str, Any]


def schema(version: int, **changes: Any) -> Doc:
    """``notes`` at ``version``: id, n, trail (the versions that ran), secret, note, m."""
    base: Doc = {
        "version": version,
        "type": "object",
        "primaryKey": "id",
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "maxLength": 40},
            "n": {"type": "integer"},
            "trail": {"type": "array", "items": {"type": "integer"}},
            "secret": {"type": "string"},
            "note": {"type": "string"},
            "m": {"type": "integer"},
        },
        "required": ["id", "n"],
        "indexes": ["n"],
    }
    base.update(changes)
    return base


def step(version: int) -> Any:
    def strategy(doc: Doc) -> Doc:
        doc["trail"] = [*doc.get("trail", []), version]
        return doc

    return strategy


def rows(path: Path, table: str = "col_notes") -> dict[str, tuple[Any, ...]]:
    """Raw rows ``id -> (seq, rev, lwt, deleted, origin, body)``, read with plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        sql = f'SELECT id, seq, rev, lwt, deleted, origin, body FROM "{table}"'
        return {r[0]: (*r[1:6], orjson.loads(r[6])) for r in conn.execute(sql)}
    finally:
        conn.close()


def file_state(path: Path) -> tuple[int, list[str], list[str]]:
    """The stored version of ``notes``, the tables, and the info keys of the file."""
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT version FROM p2pdb_collections WHERE name='notes'")
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        keys = conn.execute("SELECT key FROM p2pdb_info")
        return (
            version.fetchone()[0],
            sorted(t for (t,) in tables),
            sorted(k for (k,) in keys),
        )
    finally:
        conn.close()


async def fill(path: Path, count: int, password: str | None = None, **changes: Any) -> None:
    async with p2pdb.create_database(path, password=password) as db:
        notes = await db.add_collection("notes", schema(0, **changes))
        await notes.bulk_insert(
            [{"id": f"d{i:05}", "n": i, "secret": f"s{i}"} for i in range(count)]
        )
        await notes.remove_document("d00003")
        await notes.remove_document("d00004")


async def test_strategies_run_in_order_tombstones_too_and_indexes_follow(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    await fill(path, 2500)
    before = rows(path)

    async def two(doc: Doc) -> Doc:  # async strategies are awaited
        await asyncio.sleep(0)
        return step(2)(doc)

    def three(doc: Doc) -> Doc | None:
        if doc["n"] % 100 == 7 or doc["id"] == "d00004":  # a live one and a tombstone dropped
            return None
        doc = step(3)(doc)
        doc["m"] = doc["n"] * 10
        return doc

    v3 = schema(3, required=["id", "n", "m"], indexes=["m"])
    async with p2pdb.create_database(path) as db:
        seen: list[MigrationProgress] = []
        migration_progress(db).subscribe(seen.append)
        notes = await db.add_collection(
            "notes", v3, migration_strategies={1: step(1), 2: two, 3: three}
        )
        assert [p.done for p in seen][0] == 0 and seen[-1].done == seen[-1].total == 2500
        assert [p.done for p in seen] == sorted(p.done for p in seen)
        assert {(p.collection, p.version, p.from_version) for p in seen} == {("notes", 3, 0)}
        assert await notes.count() == 2500 - 2 - 25
        assert await notes.find_one("d00107") is None
        hits = await notes.find({"m": {"$gte": 24970}}, sort=[{"m": "asc"}])
        assert [d["id"] for d in hits] == ["d02497", "d02498", "d02499"]
        assert all(d["trail"] == [1, 2, 3] for d in hits)
        query = notes.find({"m": {"$gt": 5}}, sort=[{"m": "asc"}], limit=10)
        sql = (
            f'SELECT id FROM "col_notes" WHERE deleted = 0 AND ({query.compiled.where_sql}) '
            f"ORDER BY {query.compiled.order_sql} LIMIT 10"
        )
        conn = sqlite3.connect(path)
        plan = " ".join(
            str(r[-1])
            for r in conn.execute("EXPLAIN QUERY PLAN " + sql, query.compiled.where_params)
        )
        conn.close()
        assert "ix_notes__m" in plan and "TEMP B-TREE" not in plan, plan
    after = rows(path)
    assert "d00004" not in after and "d00107" not in after
    tomb = after["d00003"]
    assert tomb[3] == 1 and tomb[5]["trail"] == [1, 2, 3]  # the tombstone was migrated
    # a migrated row keeps its sequence number, revision, write time and origin
    assert after["d01000"][:5] == before["d01000"][:5]
    assert after["d01000"][5] == {**before["d01000"][5], "trail": [1, 2, 3], "m": 10000}
    version, tables, keys = file_state(path)
    assert version == 3 and tables.count("col_notes") == 1
    assert not [t for t in tables if "#" in t] and not [k for k in keys if "migration" in k]
    conn = sqlite3.connect(path)
    indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert "ix_notes__m" in indexes and "ix_notes__n" not in indexes
    async with p2pdb.create_database(path) as db:  # opens at v3, no strategies needed
        notes = await db.add_collection("notes", v3)
        assert (await notes.find_one("d00010") or {})["trail"] == [1, 2, 3]


async def test_errors_before_anything_changes(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    await fill(path, 50)
    state = file_state(path)
    async with p2pdb.create_database(path) as db:
        with pytest.raises(SchemaError) as missing:
            await db.add_collection("notes", schema(2), migration_strategies={1: step(1)})
        assert missing.value.code == "MIGRATION_STRATEGY_MISSING"
        assert missing.value.parameters["missing"] == [2]
        with pytest.raises(SchemaError) as none:
            await db.add_collection("notes", schema(1))
        assert none.value.code == "MIGRATION_STRATEGY_MISSING"
    assert file_state(path) == state
    async with p2pdb.create_database(path) as db:
        await db.add_collection("notes", schema(1), migration_strategies={1: step(1)})
    async with p2pdb.create_database(path) as db:
        with pytest.raises(SchemaError) as lower:
            await db.add_collection("notes", schema(0))
        assert lower.value.code == "MIGRATION_VERSION_LOWER"
        assert lower.value.parameters["stored_version"] == 1


async def test_an_empty_collection_needs_no_strategy(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    async with p2pdb.create_database(path) as db:
        await db.add_collection("notes", schema(0))
    async with p2pdb.create_database(path) as db:
        notes = await db.add_collection("notes", schema(4, indexes=["m"]))
        await notes.insert({"id": "a", "n": 1, "m": 2})
    assert file_state(path)[0] == 4


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (lambda doc: 1 / 0 if doc["id"] == "d02100" else doc, "MIGRATION_STRATEGY_FAILED"),
        (
            lambda doc: {**doc, "n": "x"} if doc["id"] == "d02100" else doc,
            "MIGRATION_DOCUMENT_INVALID",
        ),
        (
            lambda doc: {**doc, "id": "other"} if doc["id"] == "d02100" else doc,
            "MIGRATION_DOCUMENT_INVALID",
        ),
        (lambda doc: [doc] if doc["id"] == "d02100" else doc, "MIGRATION_DOCUMENT_INVALID"),
    ],
)
async def test_a_failing_strategy_leaves_the_old_version_and_can_be_retried(
    tmp_path: Path, bad: Any, code: str
) -> None:
    path = tmp_path / "m.db"
    await fill(path, 2500)  # the failure comes after two committed batches
    before, state = rows(path), file_state(path)
    async with p2pdb.create_database(path) as db:
        seen: list[MigrationProgress] = []
        migration_progress(db).subscribe(seen.append)
        with pytest.raises(SchemaError) as failed:
            await db.add_collection("notes", schema(2), migration_strategies={1: step(1), 2: bad})
        assert failed.value.code == code
        assert failed.value.parameters["document_id"] == "d02100"
        assert failed.value.parameters["version"] == 2
        assert max(p.done for p in seen) == 2000
        assert "notes" not in db.collections
    assert rows(path) == before and file_state(path) == state  # nothing half-applied
    async with p2pdb.create_database(path) as db:  # fixed: runs from the start
        notes = await db.add_collection(
            "notes", schema(2), migration_strategies={1: step(1), 2: step(2)}
        )
        assert (await notes.find_one("d00001") or {})["trail"] == [1, 2]
        assert (await notes.find_one("d02100") or {})["trail"] == [1, 2]


async def test_encrypted_collection_with_a_new_encrypted_field_list(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    await fill(path, 1200, password="pw-1234567", encrypted=["secret"])
    raw = rows(path)["d00042"][5]
    assert raw["secret"] != "s42"  # stored encrypted

    def move(doc: Doc) -> Doc:  # v1 keeps the value in "note", encrypted, and a plain copy
        doc["note"] = doc.pop("secret")
        doc["m"] = len(doc["note"])
        return doc

    v1 = schema(1, encrypted=["note"])
    async with p2pdb.create_database(path, password="pw-1234567") as db:
        notes = await db.add_collection("notes", v1, migration_strategies={1: move})
        doc = await notes.find_one("d00042")
        assert doc is not None and doc["note"] == "s42" and "secret" not in doc.to_dict()
        tomb = db.storage.get_one("notes", "d00003")
        assert tomb is not None and tomb["_deleted"] and tomb["note"] == "s3"
    raw = rows(path)["d00042"][5]
    assert raw["note"] != "s42" and "s42" not in orjson.dumps(raw).decode()
    async with p2pdb.create_database(path, password="pw-1234567") as db:
        notes = await db.add_collection("notes", v1)
        assert (await notes.find_one("d01199") or {})["note"] == "s1199"


async def refused(state: Any) -> list[P2PDBError]:
    """The errors ``state`` reports, collected until the first one (at most 15 s)."""
    errors: list[P2PDBError] = []
    arrived = asyncio.Event()

    def on_error(error: Any) -> None:
        errors.append(error)
        arrived.set()

    state.errors.subscribe(on_error)
    async with asyncio.timeout(15):
        await arrived.wait()
    return errors


def remote_code(error: P2PDBError) -> str | None:
    remote = error.parameters.get("remote_error")
    if isinstance(remote, dict):
        return str(remote.get("code"))
    return error.code


async def test_replication_keeps_checkpoints_migrates_assumed_states_refuses_old_shapes(
    tmp_path: Path,
) -> None:
    def add_m(doc: Doc) -> Doc:
        doc["m"] = doc["n"] * 10
        return doc

    v1 = schema(1, required=["id", "n", "m"])
    fork_path, master_path, old_path = tmp_path / "f.db", tmp_path / "m.db", tmp_path / "o.db"
    await fill(master_path, 30)
    async with (
        p2pdb.create_database(master_path) as master_db,
        p2pdb.create_database(fork_path) as fork_db,
    ):
        master = await master_db.add_collection("notes", schema(0))
        fork = await fork_db.add_collection("notes", schema(0))
        async with WirePipe(collection_handler(master)) as pipe:
            state = replicate(fork, pipe.handler, "main", live=False)
            await state.wait_for_in_sync()
            await state.cancel()
        assert await fork.count() == 28
    checkpoints = {}
    async with p2pdb.create_database(fork_path) as fork_db:
        for direction in ("up", "down"):
            checkpoints[direction] = fork_db.storage.get_checkpoint("notes", "main", direction)
    # both sides migrate the same way (RxDB's rule): the fork's checkpoints are kept and its
    # assumed master states migrated, so a later edit pushes without a conflict
    async with (
        p2pdb.create_database(master_path) as master_db,
        p2pdb.create_database(fork_path) as fork_db,
    ):
        master = await master_db.add_collection("notes", v1, migration_strategies={1: add_m})
        fork = await fork_db.add_collection("notes", v1, migration_strategies={1: add_m})
        stored = fork_db.storage.replication_state("notes", "main")
        assert stored["up"] == checkpoints["up"] and stored["down"] == checkpoints["down"]
        assert stored["assumed"]["d00007"]["m"] == 70
        doc = await fork.find_one("d00007")
        assert doc is not None
        await doc.patch({"m": 71})
        async with WirePipe(collection_handler(master)) as pipe:
            state = replicate(fork, pipe.handler, "main", live=False)
            await state.wait_for_in_sync()
            await state.cancel()
        assert (await master.find_one("d00007") or {})["m"] == 71  # not lost to a conflict
        assert (await fork.find_one("d00007") or {})["m"] == 71
        # a peer still on version 0: its old-shaped documents are refused, nothing stored
        async with p2pdb.create_database(old_path) as old_db:
            v0 = schema(0)
            del v0["properties"]["m"]  # version 0 of that peer has no "m"
            old = await old_db.add_collection("notes", v0)
            await old.insert({"id": "fresh", "n": 1})
            async with WirePipe(collection_handler(old)) as pipe:
                state = replicate(fork, pipe.handler, "old", push=False)
                errors = await refused(state)
                await state.cancel()
            assert errors[0].code == "DOCUMENT_INVALID"
            assert errors[0].parameters["document_id"] == "fresh"
            assert await fork.find_one("fresh") is None
            # and the old peer, as a master, refuses the fork's new-shaped documents
            async with WirePipe(collection_handler(old)) as pipe:
                state = replicate(fork, pipe.handler, "old-push", pull=False)
                errors = await refused(state)
                await state.cancel()
            assert remote_code(errors[0]) == "REPLICATION_PUSH_INVALID"
            assert await old.count() == 1  # only "fresh": nothing of the fork's was stored


def test_cli_migrate_and_its_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "m.db"
    asyncio.run(fill(path, 1500))
    (tmp_path / "notes_steps.py").write_text(
        "def one(doc):\n    doc['trail'] = [1]\n    return doc\n\nSTEPS = {1: one}\n"
    )
    (tmp_path / "v1.json").write_text(orjson.dumps(schema(1)).decode())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "p2pdb", "migrate", str(path), "--collection", "notes"]
        return subprocess.run(
            [*command, "--schema", "v1.json", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    bad = run("--strategies", "notes_steps:NOPE")
    assert bad.returncode == 2 and "CLI_MIGRATION_STRATEGIES" in bad.stderr
    done = run("--strategies", "notes_steps:STEPS")
    assert done.returncode == 0, done.stderr
    assert "notes is at version 1: 1498 documents" in done.stderr
    assert rows(path)["d00042"][5]["trail"] == [1]


async def test_a_write_by_another_process_during_the_migration_drops_it(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    await fill(path, 1500)

    def meddle(doc: Doc) -> Doc:
        if doc["id"] == "d01200":  # the first batch is committed: "another process" writes
            other = sqlite3.connect(path)
            other.execute(
                "UPDATE col_notes SET seq = seq + 100000, body = ? WHERE id = ?",
                (orjson.dumps({"id": "d00001", "n": -1}).decode(), "d00001"),
            )
            other.commit()
            other.close()
        return step(1)(doc)

    async with p2pdb.create_database(path) as db:
        with pytest.raises(SchemaError) as changed:
            await db.add_collection("notes", schema(1), migration_strategies={1: meddle})
        assert changed.value.code == "MIGRATION_SOURCE_CHANGED"
    version, tables, keys = file_state(path)
    assert version == 0 and not [t for t in tables if "#" in t]
    assert not [k for k in keys if "migration" in k]
    async with p2pdb.create_database(path) as db:  # again: migrates the new state too
        notes = await db.add_collection("notes", schema(1), migration_strategies={1: step(1)})
        assert (await notes.find_one("d00001") or {}).to_dict() == {
            "id": "d00001",
            "n": -1,
            "trail": [1],
        }


async def test_a_password_changed_by_another_process_during_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    await fill(path, 1500, password="pw-1234567", encrypted=["secret"])
    other = await p2pdb.create_database(path, password="pw-1234567")

    async def meddle(doc: Doc) -> Doc:
        if doc["id"] == "d01200":  # the first batch is committed under the old key
            await other.change_password("pw-1234567", "pw-7654321")
        return step(1)(doc)

    v1 = schema(1, encrypted=["secret"])
    try:
        async with p2pdb.create_database(path, password="pw-1234567") as db:
            with pytest.raises(p2pdb.errors.EncryptionError) as changed:
                await db.add_collection("notes", v1, migration_strategies={1: meddle})
            assert changed.value.code == "ENCRYPTION_KEY_CHANGED"
    finally:
        await other.close()
    version, tables, keys = file_state(path)
    assert version == 0 and not [t for t in tables if "#" in t]
    assert not [k for k in keys if k.startswith("migration")]
    async with p2pdb.create_database(path, password="pw-7654321") as db:
        notes = await db.add_collection("notes", v1, migration_strategies={1: step(1)})
        assert (await notes.find_one("d01300") or {}).to_dict()["secret"] == "s1300"
