"""The nemesis checker itself: it must see every kind of failure it counts, and accept both
outcomes of a write that was in flight when its peer was killed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from nemesis_check import check
from nemesis_peer import SCHEMA, document

import p2pdb


def write_log(path: Path, entries: list[dict[str, Any]]) -> None:
    lines = [orjson.dumps(e) for e in entries]
    path.write_bytes(b"\n".join(lines) + b"\n" + b'{"s": "intent", "w": 9')  # a torn last line


def acked(w: int, op: str, doc_id: str, name: str = "p0") -> list[dict[str, Any]]:
    doc = None if op == "remove" else document(name, doc_id, w)
    return [
        {"s": "intent", "w": w, "op": op, "id": doc_id, "doc": doc},
        {"s": "ack", "w": w, "op": op, "id": doc_id},
    ]


async def make_db(path: Path, docs: list[dict[str, Any]]) -> Path:
    async with p2pdb.create_database(str(path)) as db:
        collection = await db.add_collection("docs", schema=SCHEMA)
        for doc in docs:
            await collection.upsert(doc)
    return path


async def test_a_clean_history_passes_and_in_flight_writes_may_go_either_way(
    tmp_path: Path,
) -> None:
    log = tmp_path / "p0.writes"
    write_log(
        log,
        [
            *acked(1, "insert", "p0-1"),
            *acked(2, "update", "p0-1"),
            *acked(3, "insert", "p0-3"),
            *acked(4, "remove", "p0-3"),
            *acked(5, "upsert", "shared-0"),
            {"s": "intent", "w": 6, "op": "update", "id": "p0-1", "doc": document("p0", "p0-1", 6)},
            {"s": "start", "w": 6},
            {"s": "intent", "w": 7, "op": "insert", "id": "p0-7", "doc": document("p0", "p0-7", 7)},
        ],
    )
    shared = document("p0", "shared-0", 5)
    # one peer got the in-flight update and insert, the other did not
    a = await make_db(
        tmp_path / "a.db", [document("p0", "p0-1", 6), document("p0", "p0-7", 7), shared]
    )
    b = await make_db(tmp_path / "b.db", [document("p0", "p0-1", 2), shared])
    result = await check({"a": a, "b": b}, {"p0": log})
    assert (result.acknowledged, result.in_flight) == (5, 2)
    assert (result.lost, result.resurrected, result.unexpected, result.corrupt) == (0, 0, 0, 0)
    assert result.divergent == 2  # p0-1 and p0-7 differ between the two files
    assert not result.ok


async def test_lost_resurrected_and_unexpected_states_are_counted(tmp_path: Path) -> None:
    log = tmp_path / "p0.writes"
    write_log(
        log,
        [
            *acked(1, "insert", "p0-1"),
            *acked(2, "update", "p0-1"),
            *acked(3, "insert", "p0-3"),
            *acked(4, "remove", "p0-3"),
            *acked(5, "insert", "p0-5"),
        ],
    )
    stale = document("p0", "p0-1", 1)  # rolled back to an older acknowledged state
    back = document("p0", "p0-3", 3)  # removed, and back
    phantom = document("p9", "p9-1", 1)  # nobody wrote this
    a = await make_db(tmp_path / "a.db", [stale, back, phantom])  # and p0-5 is missing
    result = await check({"a": a}, {"p0": log})
    assert (result.lost, result.resurrected, result.unexpected) == (2, 1, 1), result.examples
    assert result.divergent == 0 and result.corrupt == 0
    assert not result.ok
