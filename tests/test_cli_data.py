"""``p2pdb inspect``, ``export`` and ``import`` on real files, run as ``python -m p2pdb``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cli_helpers import run
from schemas import PEER_SCHEMA

import p2pdb
from p2pdb.replication import collection_handler, replicate

PASSWORD = "correct horse battery"
SECRET_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 64},
        "title": {"type": "string"},
        "body": {"type": "string"},
    },
    "required": ["id"],
    "encrypted": ["body"],
}


async def fill(path: Path) -> None:
    """Two collections, 1234 documents, some removed (tombstones), some updated."""
    async with p2pdb.create_database(str(path)) as db:
        docs = await db.add_collection("docs", schema=PEER_SCHEMA)
        await docs.bulk_insert(
            [{"id": f"d{i:04}", "text": f"doc {i}", "n": i} for i in range(1200)]
        )
        for i in range(0, 1200, 100):
            await docs.remove_document(f"d{i:04}")
        await docs.upsert({"id": "d0001", "text": "edited", "n": -1})
        notes = await db.add_collection("notes", schema={**PEER_SCHEMA, "version": 1})
        await notes.bulk_insert([{"id": f"n{i}", "text": "ü ✓ \t é"} for i in range(34)])


async def states(path: Path, password: str | None = None) -> dict[str, dict[str, Any]]:
    """``collection -> id -> user fields (+ _deleted)`` of every stored state."""
    out: dict[str, dict[str, Any]] = {}
    async with p2pdb.create_database(str(path), password=password) as db:
        for name, schema in db.storage.stored_schemas().items():
            collection = await db.add_collection(name, schema=schema)
            pairs, _ = collection.storage.changes_since(name, 0, 100_000)
            out[name] = {
                s["id"]: {k: v for k, v in s.items() if k not in ("_rev", "_meta")}
                for _, s in pairs
            }
    return out


def live(all_states: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: {i: s for i, s in docs.items() if not s["_deleted"]}
        for name, docs in all_states.items()
    }


async def test_inspect_shows_collections_counts_and_replications(tmp_path: Path) -> None:
    fork_path, master_path = tmp_path / "fork.db", tmp_path / "master.db"
    await fill(master_path)
    async with (
        p2pdb.create_database(str(master_path)) as master_db,
        p2pdb.create_database(str(fork_path)) as fork_db,
    ):
        master = await master_db.add_collection("docs", schema=PEER_SCHEMA)
        fork = await fork_db.add_collection("docs", schema=PEER_SCHEMA)
        await fork.insert({"id": "mine", "text": "from the fork"})
        state = replicate(fork, collection_handler(master), "backup-1")
        await state.wait_for_in_sync()
        await state.cancel()
    result = run("inspect", str(fork_path), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["encrypted"] is False
    (docs,) = info["collections"]
    assert (docs["name"], docs["schema_version"]) == ("docs", 0)
    assert (docs["documents"], docs["tombstones"]) == (1200 - 12 + 1, 12)
    (replication,) = info["replications"]
    assert replication["collection"] == "docs" and replication["replication_id"] == "backup-1"
    # the sequence is the file's: 1213 docs writes, 34 notes, then the fork's push
    assert replication["down_checkpoint"] == {"seq": 1213 + 34 + 1}
    assert isinstance(replication["up_checkpoint"], int) and replication["up_checkpoint"] > 0
    # the last contact: when the replication last stored a checkpoint (just now)
    contact = datetime.fromisoformat(replication["last_contact"])
    assert abs((datetime.now(UTC) - contact).total_seconds()) < 60
    assert "last contact " + replication["last_contact"] in run("inspect", str(fork_path)).stdout
    text = run("inspect", str(master_path)).stdout
    assert "docs  schema version 0  documents 1189  tombstones 12" in text  # with "mine"
    assert "notes  schema version 1  documents 34  tombstones 0" in text
    assert "replications: 0" in text


async def test_export_import_round_trip_without_tombstones(tmp_path: Path) -> None:
    source, copy = tmp_path / "source.db", tmp_path / "copy.db"
    await fill(source)
    exported = run("export", str(source), "-o", str(tmp_path / "out.jsonl"))
    assert exported.returncode == 0, exported.stderr
    assert "exported" in exported.stderr  # progress and summary on stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 2 + 1188 + 34  # a schema line per collection, live documents only
    imported = run("import", str(copy), "-i", str(tmp_path / "out.jsonl"))
    assert imported.returncode == 0, imported.stderr
    assert "0 lines rejected" in imported.stderr
    copied = await states(copy)
    assert copied == live(await states(source))
    assert all(not s["_deleted"] for docs in copied.values() for s in docs.values())


async def test_export_import_round_trip_with_tombstones_through_a_pipe(tmp_path: Path) -> None:
    source, copy = tmp_path / "source.db", tmp_path / "copy.db"
    await fill(source)
    exported = run("export", str(source), "--tombstones")
    assert exported.returncode == 0, exported.stderr
    imported = run("import", str(copy), "--batch-size", "100", stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    assert await states(copy) == await states(source)  # tombstones included


async def test_encrypted_fields_export_decrypted_only_with_the_password(tmp_path: Path) -> None:
    source, copy = tmp_path / "secret.db", tmp_path / "copy.db"
    async with p2pdb.create_database(str(source), password=PASSWORD) as db:
        notes = await db.add_collection("notes", schema=SECRET_SCHEMA)
        await notes.insert({"id": "a", "title": "t", "body": "the secret"})
    refused = run("export", str(source))
    assert refused.returncode == 2
    assert refused.stderr.startswith("p2pdb: error: [ENCRYPTION_PASSWORD_REQUIRED]")
    assert "the secret" not in refused.stdout
    wrong = run("export", str(source), "--password", "not the password")
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.startswith("p2pdb: error: [ENCRYPTION_WRONG_PASSWORD]")
    env = {"P2PDB_TEST_PASSWORD": PASSWORD}
    exported = run("export", str(source), "--password-env", "P2PDB_TEST_PASSWORD", env=env)
    assert exported.returncode == 0, exported.stderr
    assert '"body":"the secret"' in exported.stdout
    inspected = run("inspect", str(source))  # no password needed to look
    assert "encrypted: body" in inspected.stdout
    imported = run(
        "import", str(copy), "--password-env", "P2PDB_TEST_PASSWORD", stdin=exported.stdout, env=env
    )
    assert imported.returncode == 0, imported.stderr
    assert await states(copy, PASSWORD) == await states(source, PASSWORD)
    assert b"the secret" not in copy.read_bytes()  # encrypted again in the new file


async def test_import_reports_invalid_lines_by_number_and_writes_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    async with p2pdb.create_database(str(db)) as database:
        await database.add_collection("docs", schema=PEER_SCHEMA)
    lines = [
        json.dumps({"id": "a", "text": "ok"}),
        json.dumps({"id": "b", "text": 5}),
        "{not json",
        "",
        json.dumps({"id": "c", "text": "ok", "n": 1.5}),
        json.dumps({"id": "d", "text": "ok too"}),
    ]
    result = run("import", str(db), "--collection", "docs", stdin="\n".join(lines) + "\n")
    assert result.returncode == 1
    assert "line 2: [DOCUMENT_INVALID]" in result.stderr
    assert "line 3: [CLI_IMPORT_LINE]" in result.stderr
    assert "line 5: [DOCUMENT_INVALID]" in result.stderr
    assert "3 lines rejected" in result.stderr
    assert sorted(live(await states(db))["docs"]) == ["a", "d"]


async def test_import_of_a_mismatching_schema_stops(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    async with p2pdb.create_database(str(db)) as database:
        await database.add_collection("docs", schema=PEER_SCHEMA)
    other = {**PEER_SCHEMA, "required": ["id"]}
    lines = [
        json.dumps({"collection": "docs", "schema": other}),
        json.dumps({"collection": "docs", "document": {"id": "x"}}),
    ]
    result = run("import", str(db), stdin="\n".join(lines))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("p2pdb: error: [SCHEMA_MISMATCH]")
    assert live(await states(db))["docs"] == {}
