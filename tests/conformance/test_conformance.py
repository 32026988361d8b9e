"""Replication conformance: one set of tests, run on every transport (see conftest.py).

Each test gets ``make_pair`` for the transport under test and checks what any transport must
give: documents both ways, no echo, conflicts through the collection's handler, resuming from
checkpoints, RESYNC, hostile answers, batches larger than ``batch_size``, and tombstones.
"""

from __future__ import annotations

from typing import Any

import pytest
from conformance_pairs import MakePair
from replication_helpers import contents
from schemas import PEER_SCHEMA

import p2pdb
from p2pdb.conflicts import Conflict, FunctionConflictHandler
from p2pdb.errors import P2PDBError


def count_writes(collection: p2pdb.Collection) -> list[str]:
    """The ids of every write to ``collection`` from now on, in commit order."""
    written: list[str] = []
    collection.changes.subscribe(lambda event: written.append(event.id))
    return written


async def text(collection: p2pdb.Collection, doc_id: str) -> Any:
    doc = await collection.find_one(doc_id)
    return None if doc is None else doc["text"]


async def test_insert_update_delete_reinsert_both_ways_without_echo(make_pair: MakePair) -> None:
    pair = await make_pair()
    master_writes, fork_writes = count_writes(pair.master), count_writes(pair.fork)
    await pair.start()
    a = await pair.fork.insert({"id": "a", "text": "from fork"})
    b = await pair.master.insert({"id": "b", "text": "from master"})
    await pair.converged()
    a = await a.patch({"text": "fork edit"})
    b = await b.patch({"text": "master edit"})
    await pair.converged()
    assert await text(pair.master, "a") == "fork edit"
    assert await text(pair.fork, "b") == "master edit"
    await a.remove()
    await pair.converged()
    await b.remove()
    await pair.converged()
    assert await contents(pair.master) == {}
    await pair.master.insert({"id": "a", "text": "re-inserted on master"})
    await pair.fork.insert({"id": "b", "text": "re-inserted on fork"})
    await pair.converged()
    assert await text(pair.master, "b") == "re-inserted on fork"
    assert await text(pair.fork, "a") == "re-inserted on master"
    # each of the 8 writes happened once where it was made and once on the other side:
    # nothing came back to its origin as a second write
    assert sorted(master_writes) == sorted(fork_writes) == ["a"] * 4 + ["b"] * 4


async def test_batches_larger_than_batch_size(make_pair: MakePair) -> None:
    pair = await make_pair(batch_size=10)
    await pair.master.bulk_insert([{"id": f"m{i:02}", "text": "m", "n": i} for i in range(35)])
    await pair.fork.bulk_insert([{"id": f"f{i:02}", "text": "f", "n": i} for i in range(25)])
    await pair.start()
    await pair.converged()
    assert await pair.fork.count() == await pair.master.count() == 60
    if pair.tap is not None:
        assert pair.tap.pull_answers >= 4  # 35 master documents, 10 at a time
    # live: one transaction of 25 on each side, more than one batch each
    await pair.master.bulk_insert([{"id": f"lm{i:02}", "text": "m"} for i in range(25)])
    await pair.fork.bulk_insert([{"id": f"lf{i:02}", "text": "f"} for i in range(25)])
    await pair.converged()
    assert await pair.fork.count() == await pair.master.count() == 110


def raising_resolve(conflict: Conflict) -> dict[str, Any]:
    raise AssertionError(f"resolve must not be called: {conflict}")


async def test_identical_concurrent_writes_call_no_resolve(make_pair: MakePair) -> None:
    pair = await make_pair(conflict_handler=FunctionConflictHandler(raising_resolve))
    same = {"id": "same", "text": "identical", "n": 1}
    await pair.master.insert(same)
    await pair.fork.insert(same)
    await pair.start()
    await pair.converged()
    await pair.stop()  # offline, both sides make the same edit
    await (await pair.master.find_one("same")).patch({"n": 2})  # type: ignore[union-attr]
    await (await pair.fork.find_one("same")).patch({"n": 2})  # type: ignore[union-attr]
    await pair.start()
    await pair.converged()
    assert pair.errors == []
    assert await contents(pair.master) == {"same": {**same, "n": 2}}


@pytest.mark.parametrize("offline", ["stopped", "paused"])
async def test_concurrent_edits_converge_through_the_handler(
    make_pair: MakePair, offline: str
) -> None:
    calls: list[Conflict] = []

    def merge_texts(conflict: Conflict) -> dict[str, Any]:
        """Keep both texts, sorted, so every side computes the same result."""
        calls.append(conflict)
        texts = sorted({conflict.real_master_state["text"], conflict.new_document_state["text"]})
        return {**conflict.real_master_state, "text": " + ".join(texts)}

    pair = await make_pair(conflict_handler=merge_texts)
    await pair.master.insert({"id": "doc", "text": "base"})
    await pair.start()
    await pair.converged()
    # offline (canceled, or paused with the transport connected), both sides edit
    await (pair.stop() if offline == "stopped" else pair.pause())
    await (await pair.master.find_one("doc")).patch({"text": "master"})  # type: ignore[union-attr]
    await (await pair.fork.find_one("doc")).patch({"text": "fork"})  # type: ignore[union-attr]
    await (pair.start() if offline == "stopped" else pair.resume())
    await pair.converged()
    assert await text(pair.master, "doc") == await text(pair.fork, "doc") == "fork + master"
    assert calls, "the fork's conflict handler resolved the conflict"
    for conflict in calls:
        assert conflict.assumed_master_state is not None
        assert conflict.assumed_master_state["text"] == "base"
        assert conflict.real_master_state["text"] == "master"
        assert conflict.new_document_state["text"] == "fork"


async def test_master_wins_by_default(make_pair: MakePair) -> None:
    pair = await make_pair()
    await pair.master.insert({"id": "doc", "text": "master's"})
    await pair.fork.insert({"id": "doc", "text": "fork's"})  # never saw the master's
    await pair.fork.insert({"id": "other", "text": "fork only"})
    await pair.start()
    await pair.converged()
    assert await text(pair.fork, "doc") == await text(pair.master, "doc") == "master's"
    assert await text(pair.master, "other") == "fork only"


async def test_resume_from_checkpoints_after_restart(make_pair: MakePair) -> None:
    pair = await make_pair()
    await pair.master.bulk_insert([{"id": f"m{i}", "text": "x"} for i in range(30)])
    await pair.fork.bulk_insert([{"id": f"f{i}", "text": "x"} for i in range(20)])
    await pair.start()
    await pair.converged()
    await pair.stop()
    await pair.master.insert({"id": "new-m", "text": "written while stopped"})
    await pair.fork.insert({"id": "new-f", "text": "written while stopped"})
    master_writes, fork_writes = count_writes(pair.master), count_writes(pair.fork)
    if pair.tap is not None:
        pair.tap.reset_counts()
    await pair.start()
    await pair.converged()
    assert fork_writes == ["new-m"] and master_writes == ["new-f"]
    if pair.tap is not None:  # resumed: only the new documents travel (and new-f's echo)
        assert pair.tap.pushed == ["new-f"]
        assert "new-m" in pair.tap.pulled
        assert set(pair.tap.pulled) <= {"new-m", "new-f"}, pair.tap.pulled


async def test_resync_picks_up_missed_changes(make_pair: MakePair) -> None:
    pair = await make_pair()
    tap = pair.require_tap()
    await pair.master.insert({"id": "seen", "text": "x"})
    await pair.start()
    await pair.converged()
    tap.drop_stream = True
    await pair.master.insert({"id": "missed", "text": "its stream event is lost"})
    await tap.wait(lambda: tap.dropped >= 1)
    tap.drop_stream = False
    await pair.wait_in_sync()
    assert await pair.fork.find_one("missed") is None  # nothing else brings it
    await pair.re_sync()
    await pair.converged()
    assert await text(pair.fork, "missed") == "its stream event is lost"


async def test_document_failing_the_schema_is_reported_and_not_stored(
    make_pair: MakePair,
) -> None:
    loose = {**PEER_SCHEMA, "properties": {**PEER_SCHEMA["properties"], "n": {"type": "number"}}}
    pair = await make_pair(master_schema=loose)
    await pair.master.bulk_insert(
        [
            {"id": "ok1", "text": "a"},
            {"id": "bad", "text": "b", "n": 1.5},
            {"id": "ok2", "text": "c"},
        ]
    )
    await pair.start()
    await pair.wait_error("DOCUMENT_INVALID", document_id="bad")
    await pair.wait_in_sync()
    assert sorted(await contents(pair.fork)) == ["ok1", "ok2"]
    await pair.master.insert({"id": "later", "text": "still replicates"})
    await pair.fork.insert({"id": "from-fork", "text": "and pushes"})
    await pair.wait_in_sync()
    assert sorted(await contents(pair.master)) == ["bad", "from-fork", "later", "ok1", "ok2"]
    assert sorted(await contents(pair.fork)) == ["from-fork", "later", "ok1", "ok2"]
    assert {
        (getattr(e, "code", e), getattr(e, "parameters", {}).get("document_id"))
        for e in pair.errors
    } == {("DOCUMENT_INVALID", "bad")}


async def test_hostile_documents_in_an_answer_are_reported_and_not_stored(
    make_pair: MakePair,
) -> None:
    pair = await make_pair()
    tap = pair.require_tap()
    await pair.master.bulk_insert([{"id": "ok1", "text": "a"}, {"id": "ok2", "text": "b"}])

    def add_hostile(answer: dict[str, Any]) -> object:
        hostile = [
            {"id": "evil", "text": 5},  # fails the schema
            "not a document",
            {"id": "flag", "text": "x", "_deleted": "yes"},  # _deleted must be a boolean
        ]
        return {**answer, "documents": [*answer["documents"], *hostile]}

    tap.corrupt_next_answers(add_hostile)
    await pair.start()
    await pair.wait_error("DOCUMENT_INVALID", document_id="evil")
    await pair.wait_error("REPLICATION_BAD_DOCUMENT", document_id=None)
    await pair.wait_error("REPLICATION_BAD_DOCUMENT", document_id="flag")
    await pair.converged()
    assert sorted(await contents(pair.fork)) == ["ok1", "ok2"]
    assert tap.corrupted == 1


async def test_malformed_answer_is_reported_and_retried(make_pair: MakePair) -> None:
    pair = await make_pair()
    tap = pair.require_tap()
    await pair.master.bulk_insert([{"id": f"m{i}", "text": "x"} for i in range(5)])
    tap.corrupt_next_answers(
        lambda answer: {**answer, "documents": "not a list"},
        lambda answer: "not an answer",
    )
    await pair.start()
    await pair.converged()
    assert tap.corrupted == 2
    bad = [e for e in pair.errors if isinstance(e, P2PDBError)]
    assert [e.code for e in bad] == [e.code for e in bad if e.code in pair.bad_answer_codes]
    assert len(bad) == 2, pair.errors
    assert await pair.fork.count() == 5


async def test_tombstones_travel_both_ways(make_pair: MakePair) -> None:
    pair = await make_pair()
    await pair.master.bulk_insert([{"id": i, "text": "m"} for i in ("a", "b", "gone")])
    await (await pair.master.find_one("gone")).remove()  # type: ignore[union-attr]
    await pair.fork.insert({"id": "f", "text": "f"})
    await pair.start()
    await pair.converged()
    assert sorted(await contents(pair.fork)) == ["a", "b", "f"]  # a tombstone never shows up
    await pair.stop()  # deletions made while offline travel as tombstones on resume
    await (await pair.master.find_one("a")).remove()  # type: ignore[union-attr]
    await (await pair.fork.find_one("b")).remove()  # type: ignore[union-attr]
    await (await pair.fork.find_one("f")).remove()  # type: ignore[union-attr]
    if pair.tap is not None:
        pair.tap.reset_counts()
    await pair.start()
    await pair.converged()
    assert await contents(pair.master) == await contents(pair.fork) == {}
    if pair.tap is not None:
        assert "a" in pair.tap.pulled and sorted(pair.tap.pushed) == ["b", "f"]
    await pair.fork.insert({"id": "gone", "text": "re-created after its tombstone"})
    await pair.master.insert({"id": "b", "text": "re-created after its tombstone"})
    await pair.converged()
    assert sorted(await contents(pair.master)) == ["b", "gone"]
