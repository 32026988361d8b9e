"""Backups between p2pdb and RxDB 17.6's json-dump plugin (``rxdb_dump.mjs``): an RxDB
``exportJSON()`` imports into p2pdb, and p2pdb's ``export_json()`` documents import into
RxDB with ``importJSON()``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson

import p2pdb

HERE = Path(__file__).resolve().parent
SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 64},
        "text": {"type": "string"},
        "n": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["id", "text"],
}


def rxdb(node: str, **request: Any) -> dict[str, Any]:
    result = subprocess.run(
        [node, str(HERE / "rxdb_dump.mjs")],
        input=orjson.dumps({"schema": SCHEMA, **request}),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    answer: dict[str, Any] = orjson.loads(result.stdout)
    return answer


async def test_an_rxdb_export_imports_into_p2pdb(node: str, tmp_path: Path) -> None:
    docs = [
        {"id": "a", "text": "ünïcödé 😀", "n": 1, "tags": ["x"]},
        {"id": "b", "text": "removed in RxDB"},
        {"id": "c", "text": "plain", "n": -5},
    ]
    answer = rxdb(node, docs=docs, remove=["b"])
    dump = answer["dump"]
    assert "format" not in dump and dump["collections"][0]["docs"][0]["_meta"]  # RxDB's shape
    async with p2pdb.create_database(tmp_path / "p.db") as db:
        notes = await db.add_collection("notes", schema=SCHEMA)
        report = await db.import_json(dump)
        assert report.written == {"notes": 2}
        assert [d.to_dict() for d in await notes.find()] == [docs[0], docs[2]]


async def test_a_p2pdb_export_imports_into_rxdb(node: str, tmp_path: Path) -> None:
    async with p2pdb.create_database(tmp_path / "p.db") as db:
        notes = await db.add_collection("notes", schema=SCHEMA)
        await notes.bulk_insert(
            [{"id": f"d{i}", "text": f"doc {i}", "n": i, "tags": ["t"] * i} for i in range(5)]
        )
        await notes.find_one("d3").remove()
        dump = await db.export_json()
    answer = rxdb(node, docs=[], **{"import": dump})
    expected = dump["collections"][0]["docs"]
    assert [d["id"] for d in expected] == ["d0", "d1", "d2", "d4"]
    got = [{k: v for k, v in d.items() if not k.startswith("_")} for d in answer["docs"]]
    assert got == expected
