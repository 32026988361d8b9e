"""The nemesis checker: the peers' write logs against the database files they left.

For every document a peer owns (``{peer}-{k}``), the expected final state is exact: the
state of the last acknowledged write to it (a remove means absent), or the state of a write
whose intent was logged after that ack but whose ack was not (the peer was SIGKILLed in the
middle: it may or may not have committed). For a shared document (``shared-{j}``) the final
state must be one that some peer wrote (acknowledged or in flight when it was killed), or
absent if no write to it was ever acknowledged. On top of that every file must pass
``PRAGMA integrity_check`` and all peers must hold identical documents.

Counts (per round):

* ``lost``: (peer file, document) pairs where an acknowledged insert or update is not the
  final state and no later in-flight write explains it;
* ``resurrected``: (peer file, document) pairs alive although their last acknowledged
  write removed them;
* ``unexpected``: (peer file, document) pairs holding a state that nobody wrote;
* ``divergent``: documents whose state is not identical on every peer;
* ``corrupt``: files failing the integrity check.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from nemesis_peer import SCHEMA, handler, read_log

import p2pdb

ABSENT = b"absent"  # the canonical form of a removed / never-written document
Doc = dict[str, Any]


def canonical(doc: Doc | None) -> bytes:
    """A comparable form of a document state (``ABSENT`` for none)."""
    if doc is None:
        return ABSENT
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


@dataclass
class Expectation:
    """What one document may end as."""

    allowed: set[bytes] = field(default_factory=set)
    last_ack: bytes | None = None  # the state of the last acknowledged write, if any
    last_ack_op: str = ""


@dataclass
class CheckResult:
    """The checker's counts, and up to a few examples of each failure."""

    acknowledged: int = 0
    in_flight: int = 0
    lost: int = 0
    resurrected: int = 0
    unexpected: int = 0
    divergent: int = 0
    corrupt: int = 0
    documents: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, resurrected, unexpected, divergent or corrupt."""
        return not (
            self.lost or self.resurrected or self.unexpected or self.divergent or self.corrupt
        )

    def note(self, text: str) -> None:
        if len(self.examples) < 8:
            self.examples.append(text)


def expectations(logs: dict[str, Path], result: CheckResult) -> dict[str, Expectation]:
    """Per document id, the states it may end in, from every peer's write log."""
    owned: dict[str, Expectation] = {}
    shared: dict[str, Expectation] = defaultdict(Expectation)
    for _name, path in sorted(logs.items()):
        intents: dict[int, dict[str, Any]] = {}
        acked: set[int] = set()
        for entry in read_log(path):
            if entry.get("s") == "intent":
                intents[entry["w"]] = entry
            elif entry.get("s") == "ack":
                acked.add(entry["w"])
        result.acknowledged += len(acked)
        result.in_flight += len(set(intents) - acked)
        for w in sorted(intents):
            entry = intents[w]
            state = canonical(entry["doc"])
            if entry["id"].startswith("shared-"):
                expect = shared[entry["id"]]
                expect.allowed.add(state)
                if w in acked:
                    expect.last_ack = state
                continue
            expect = owned.setdefault(entry["id"], Expectation(allowed={ABSENT}))
            if w in acked:  # everything before an acknowledged write is overwritten
                expect.allowed = {state}
                expect.last_ack, expect.last_ack_op = state, entry["op"]
            else:  # in flight when the peer was killed: committed or not
                expect.allowed.add(state)
    for expect in shared.values():
        if expect.last_ack is None:
            expect.allowed.add(ABSENT)
    return {**owned, **shared}


def integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of a file, read-only."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        connection.close()


async def final_states(path: Path, conflicts: str) -> dict[str, bytes]:
    """Every live document of a peer's file, through the public API."""
    async with p2pdb.create_database(str(path)) as db:
        docs = await db.add_collection("docs", schema=SCHEMA, conflict_handler=handler(conflicts))
        return {d.id: canonical(d.to_dict()) for d in await docs.find()}


async def check(
    dbs: dict[str, Path], logs: dict[str, Path], conflicts: str = "master_wins"
) -> CheckResult:
    """Check every peer's file against every peer's write log (see the module doc)."""
    result = CheckResult()
    expected = expectations(logs, result)
    states: dict[str, dict[str, bytes]] = {}
    for name, path in sorted(dbs.items()):
        verdict = integrity(path)
        if verdict != "ok":
            result.corrupt += 1
            result.note(f"{name}: integrity_check: {verdict[:200]}")
        states[name] = await final_states(path, conflicts)
    ids = set(expected).union(*(s.keys() for s in states.values()))
    result.documents = len(ids)
    for doc_id in sorted(ids):
        seen = {name: s.get(doc_id, ABSENT) for name, s in states.items()}
        if len(set(seen.values())) > 1:
            result.divergent += 1
            result.note(f"divergent {doc_id}: {seen}")
        expect = expected.get(doc_id)
        for name, state in seen.items():
            if expect is None:
                result.unexpected += 1
                result.note(f"{name}: {doc_id} = {state!r}, never written")
            elif state in expect.allowed:
                continue
            elif expect.last_ack_op == "remove" and state != ABSENT:
                result.resurrected += 1
                result.note(f"{name}: {doc_id} resurrected as {state!r}")
            elif expect.last_ack is not None:
                result.lost += 1
                result.note(f"{name}: {doc_id} = {state!r}, acknowledged {expect.last_ack!r}")
            else:
                result.unexpected += 1
                result.note(f"{name}: {doc_id} = {state!r}, allowed {expect.allowed!r}")
    return result
