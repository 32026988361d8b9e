"""The lost write the nemesis run found, reduced to three databases and one-shot passes.

In a WebRTC topic every pair of peers replicates, one of them the master: a peer is the fork
of several masters at once. With the default conflict handler (``master_wins``) a fork that
is ahead through one master and behind on another is told to take the other master's
*older* state, and then pushes that older state to the first master as a new write: the
writer's acknowledged write is rolled back on every peer (a remove comes back the same way).

Found by ``scripts/nemesis.py --rounds 1 --seconds 15 --peers 4 --seed 1`` (round 1: 32
(peer, document) pairs lost, 20 resurrected, all peers converged on the old states).
Fixed by causal order between p2pdb peers (``p2pdb/causal.py``, docs/conflicts.md): ``b``'s
state is an ancestor of the one ``c`` pushes, so ``b`` fast-forwards to it instead of calling
it a conflict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import p2pdb
from p2pdb.replication import collection_handler, replicate

SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {"id": {"type": "string", "maxLength": 50}, "v": {"type": "integer"}},
    "required": ["id", "v"],
}


async def one_pass(fork: p2pdb.Collection, master: p2pdb.Collection, name: str) -> None:
    """One full pull and push between ``fork`` and ``master`` (as a reconnecting peer does)."""
    async with replicate(fork, collection_handler(master), name, live=False) as state:
        await state.wait_for_initial_replication()
        await state.wait_for_in_sync()


async def value(collection: p2pdb.Collection) -> Any:
    doc = await collection.find_one("x")
    return None if doc is None else doc["v"]


@pytest.mark.parametrize("last_write", ["update", "remove"])
async def test_a_single_writers_last_write_is_not_undone_through_a_third_peer(
    tmp_path: Path, last_write: str
) -> None:
    dbs = [await p2pdb.create_database(str(tmp_path / f"{n}.db")) for n in "abc"]
    try:
        # a: the only writer of "x"; b: fork of a; c: fork of a and of b (a full mesh)
        a, b, c = [await db.add_collection("docs", schema=SCHEMA) for db in dbs]
        await a.insert({"id": "x", "v": 1})
        await one_pass(b, a, "b-a")
        await one_pass(c, a, "c-a")
        await one_pass(c, b, "c-b")  # everyone holds v1; c assumes b holds v1

        await (await a.find_one("x")).patch({"v": 2})  # type: ignore[union-attr]
        await one_pass(b, a, "b-a")  # b has v2 (c's link to b is down meanwhile)
        x = await a.find_one("x")
        assert x is not None
        await (x.patch({"v": 3}) if last_write == "update" else x.remove())
        expected = 3 if last_write == "update" else None
        await one_pass(c, a, "c-a")  # c has it straight from the writer (b's link is down)
        assert [await value(col) for col in (a, b, c)] == [expected, 2, expected]

        await one_pass(c, b, "c-b")  # c pushes it assuming v1; b holds v2: "conflict"
        await one_pass(c, a, "c-a")  # c pushes what it now holds to a
        await one_pass(b, a, "b-a")
        await one_pass(c, b, "c-b")
        # a's last acknowledged write stands, and nobody else ever wrote "x"
        assert [await value(col) for col in (a, b, c)] == [expected] * 3
    finally:
        for db in dbs:
            await db.close()
