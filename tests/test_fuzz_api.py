"""A stateful fuzz test of the database API against a model (hypothesis, issue #14).

Random documents (empty, unicode and dotted keys, nested values, 64-bit extremes, floats),
valid ones and ones with exactly one defect; insert, upsert, bulk insert and upsert, patch,
modify, replace (on fresh and stale snapshots), remove, remove by selector; finds, counts and
find_one with selectors and sorts the model evaluates itself, random (often malformed)
selectors and sorts, and bad arguments of every kind. After every step:

* every error is a :class:`~p2pdb.errors.P2PDBError` whose code is listed in docs/errors.md
  (and the one the step expects, where the model knows it);
* the stored documents equal the model, value for value (types and the sign of zero too),
  and every query result equals the model's own evaluation;

and at the end ``PRAGMA integrity_check`` is ``ok``.

Bounded for CI (a few seconds; derandomized, so every run tries the same examples). Run it
longer and with fresh randomness with ``P2PDB_FUZZ_EXAMPLES=<examples>`` (steps per example:
``P2PDB_FUZZ_STEPS``, default 40), e.g.
``P2PDB_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz_api.py -s``; ``-s`` shows the
number of operations tried and the codes they raised.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import p2pdb
from p2pdb.errors import ConflictError, NotFoundError, P2PDBError, ValidationError
from p2pdb.query import compile_query

EXAMPLES = int(os.environ.get("P2PDB_FUZZ_EXAMPLES", 0))
STEPS = int(os.environ.get("P2PDB_FUZZ_STEPS", 40))
DOCUMENTED = frozenset(
    re.findall(
        r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|",
        (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text(),
        re.M,
    )
)
SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 40},
        "n": {"type": "integer"},
        "text": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object", "properties": {"owner": {"type": "string"}}},
    },
    "required": ["id"],
    "indexes": ["n"],
}
DECLARED = frozenset(SCHEMA["properties"])

# ----------------------------------------------------------------------------- strategies

IDS = st.sampled_from(["a", "b", "c", "d", "é", "𝄞 x", "$x", "x.y", "0"])
_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
TEXT = st.sampled_from(["", "a", "b", "ab", "B", "é", "😀", "a\nb"]) | st.text(_CHARS, max_size=5)
ODD_KEYS = st.sampled_from(["", " ", "$a", "a.b", "é", "𝄞", "x-y", "0", "__", "k"]) | st.text(
    _CHARS, max_size=4
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308, 0.1])
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ODD_KEYS, inner, max_size=3),
    max_leaves=6,
)
EXTRA_KEYS = ODD_KEYS.filter(lambda k: not k.startswith("_") and k not in DECLARED)
N = st.integers(-5, 5) | st.integers(-(2**63), 2**63 - 1)


@st.composite
def fields(draw: st.DrawFn) -> dict[str, Any]:
    """Valid user fields without the id: declared fields of the right type, odd extras."""
    data: dict[str, Any] = {}
    if draw(st.booleans()):
        data["n"] = draw(N)
    if draw(st.booleans()):
        data["text"] = draw(TEXT)
    if draw(st.integers(0, 3)) == 0:
        data["tags"] = draw(st.lists(TEXT, max_size=3))
    if draw(st.integers(0, 3)) == 0:
        data["meta"] = {"owner": draw(TEXT)} if draw(st.booleans()) else {}
    data.update(draw(st.dictionaries(EXTRA_KEYS, VALUES, max_size=3)))
    return data


@st.composite
def good_docs(draw: st.DrawFn) -> dict[str, Any]:
    return {"id": draw(IDS), **draw(fields())}


#: One defect each, with the codes it may be refused with.
DEFECTS: list[tuple[Callable[[dict[str, Any]], Any], frozenset[str]]] = [
    (lambda d: {**d, "_x": 1}, frozenset({"DOCUMENT_RESERVED_FIELD"})),
    (lambda d: {**d, "_rev": "1-a"}, frozenset({"DOCUMENT_RESERVED_FIELD"})),
    (lambda d: {**d, "k": "a\ud800"}, frozenset({"DOCUMENT_NOT_JSON"})),
    (lambda d: {**d, "k\udfff": 1}, frozenset({"DOCUMENT_NOT_JSON"})),
    (lambda d: {**d, "k": [math.nan]}, frozenset({"DOCUMENT_NOT_JSON"})),
    (lambda d: {**d, "k": {"x": math.inf}}, frozenset({"DOCUMENT_NOT_JSON"})),
    (lambda d: {**d, "k": {1, 2}}, frozenset({"DOCUMENT_NOT_JSON"})),
    (lambda d: {**d, 5: 1}, frozenset({"DOCUMENT_NOT_JSON"})),
    (lambda d: {**d, "k": b"x"}, frozenset({"DOCUMENT_NOT_JSON"})),
    (lambda d: {**d, "k": 2**64}, frozenset({"DOCUMENT_UNSUPPORTED_VALUE"})),
    (lambda d: {**d, "k": -(2**63) - 1}, frozenset({"DOCUMENT_UNSUPPORTED_VALUE"})),
    (lambda d: {**d, "k": "a\x00"}, frozenset({"DOCUMENT_UNSUPPORTED_VALUE"})),
    (lambda d: {**d, "n": "1"}, frozenset({"DOCUMENT_INVALID"})),
    (lambda d: {**d, "n": 1.5}, frozenset({"DOCUMENT_INVALID"})),
    (lambda d: {**d, "tags": "a"}, frozenset({"DOCUMENT_INVALID"})),
    (lambda d: {**d, "meta": {"owner": 1}}, frozenset({"DOCUMENT_INVALID"})),
    (lambda d: {**d, "id": "x" * 41}, frozenset({"DOCUMENT_INVALID"})),
    (lambda d: {k: v for k, v in d.items() if k != "id"}, frozenset({"DOCUMENT_PRIMARY_KEY"})),
    (lambda d: {**d, "id": ""}, frozenset({"DOCUMENT_PRIMARY_KEY"})),
    (lambda d: {**d, "id": 5}, frozenset({"DOCUMENT_PRIMARY_KEY"})),
    (lambda d: list(d.items()), frozenset({"DOCUMENT_NOT_OBJECT"})),
    (lambda d: None, frozenset({"DOCUMENT_NOT_OBJECT"})),
]


@st.composite
def bad_docs(draw: st.DrawFn) -> tuple[Any, frozenset[str]]:
    defect, codes = draw(st.sampled_from(DEFECTS))
    return defect(draw(good_docs())), codes


# Selectors the model evaluates itself: the declared fields, whose types the schema fixes.
FIELD_CONDITIONS = st.one_of(
    st.tuples(st.just("n"), st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]), N),
    st.tuples(st.just("text"), st.sampled_from(["$eq", "$ne", "$gt", "$lt"]), TEXT),
    st.tuples(st.just("n"), st.sampled_from(["$in", "$nin"]), st.lists(N, max_size=3)),
    st.tuples(st.sampled_from(["n", "text", "tags", "meta.owner", "k"]), st.just("$exists"),
              st.booleans()),
    st.tuples(st.just("tags"), st.just("$eq"), TEXT),
    st.tuples(st.just("meta.owner"), st.just("$eq"), TEXT),
    st.tuples(st.just("id"), st.sampled_from(["$eq", "$gt", "$lt"]), IDS),
)  # fmt: skip
SELECTORS = st.recursive(
    FIELD_CONDITIONS.map(lambda c: {c[0]: {c[1]: c[2]}}),
    lambda inner: st.builds(lambda op, xs: {op: xs}, st.sampled_from(["$and", "$or", "$nor"]),
                            st.lists(inner, min_size=1, max_size=3)),
    max_leaves=4,
) | st.just({})  # fmt: skip
SORTS = st.lists(
    st.builds(lambda f, d: {f: d}, st.sampled_from(["n", "text", "id", "meta.owner"]),
              st.sampled_from(["asc", "desc"])),
    max_size=2,
) | st.none()  # fmt: skip

# Anything at all where a selector, sort, skip or limit goes (mostly malformed).
JUNK = st.recursive(
    SCALARS | st.sampled_from(["$gt", "$and", "$in", "$regex", "$elemMatch", "\ud800", 2**70,
                               math.nan, b"x", ("t",), frozenset()]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["n", "text", "$and", "$or", "$gt", "$in", "$not", "",
                                       "a..b", "\ud800", "$exists", "$size", "meta.owner"])
                      | st.integers(0, 2), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


# ----------------------------------------------------------------------------- the model

MISSING = object()


def get(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def model_matches(doc: dict[str, Any], selector: dict[str, Any]) -> bool:
    """The model's own reading of the selectors SELECTORS generates (declared fields only,
    so types are fixed: n int, text and meta.owner strings, tags a list of strings)."""
    for key, cond in selector.items():
        if key == "$and":
            ok = all(model_matches(doc, s) for s in cond)
        elif key == "$or":
            ok = any(model_matches(doc, s) for s in cond)
        elif key == "$nor":
            ok = not any(model_matches(doc, s) for s in cond)
        else:
            ((op, operand),) = cond.items()
            ok = field_matches(get(doc, key), op, operand)
        if not ok:
            return False
    return True


def field_matches(value: Any, op: str, operand: Any) -> bool:
    if op == "$exists":
        return (value is not MISSING) is operand
    if op == "$ne":
        return not field_matches(value, "$eq", operand)
    if op == "$nin":
        return not field_matches(value, "$in", operand)
    if op == "$in":
        return any(field_matches(value, "$eq", x) for x in operand)
    if value is MISSING:
        return False
    if isinstance(value, list):  # tags: one element equal
        return op == "$eq" and operand in value
    if type(value) is not type(operand):
        return False
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "$eq": lambda a, b: a == b,
        "$gt": lambda a, b: a > b,
        "$gte": lambda a, b: a >= b,
        "$lt": lambda a, b: a < b,
        "$lte": lambda a, b: a <= b,
    }
    return compare[op](value, operand)


def model_order(docs: list[dict[str, Any]], sort: list[dict[str, str]] | None) -> list[str]:
    """Ids sorted as the model expects: missing first (ascending), then by value; ties by
    id in the direction of the last sort field."""
    entries = [next(iter(s.items())) for s in sort or []]
    last_desc = bool(entries) and entries[-1][1] == "desc"
    out = sorted(docs, key=lambda d: d["id"], reverse=last_desc)
    for path, direction in reversed(entries):
        out.sort(
            key=lambda d, p=path: (0, "") if get(d, p) is MISSING else (1, get(d, p)),
            reverse=direction == "desc",
        )
    return [d["id"] for d in out]


def identical(a: Any, b: Any) -> bool:
    """Equal with the same JSON types (True is not 1, 1 is not 1.0) and sign of zero."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(identical, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    return bool(a == b)


# ----------------------------------------------------------------------------- the machine


class Run:
    """What every example shares: one loop, one database file, the counters."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.db: p2pdb.Database = self.loop.run_until_complete(p2pdb.create_database(str(path)))
        self.collections = 0
        self.operations = 0
        self.codes: Counter[str] = Counter()

    def run(self, coro: Any) -> Any:
        self.operations += 1
        return self.loop.run_until_complete(coro)


class ApiMachine(RuleBasedStateMachine):
    run_: Run

    def __init__(self) -> None:
        super().__init__()
        r = self.run_
        r.collections += 1
        self.col: p2pdb.Collection = r.loop.run_until_complete(
            r.db.add_collection(f"c{r.collections}", schema=SCHEMA)
        )
        self.model: dict[str, dict[str, Any]] = {}
        self.revs: dict[str, str] = {}  # id -> revision of the stored live state
        self.snapshots: list[p2pdb.Document] = []

    # -- helpers ---------------------------------------------------------------------------

    def call(self, make: Callable[[], Any], codes: frozenset[str] | None = None) -> Any:
        """Run one API call (sync, or awaitable); return its result or the P2PDBError it
        raised, checked: documented, and one of ``codes`` when given."""
        try:
            result = make()
            if isinstance(result, Coroutine) or hasattr(result, "__await__"):
                result = self.run_.run(_await(result))
            else:
                self.run_.operations += 1
        except P2PDBError as error:
            self.run_.codes[error.code] += 1
            assert error.code in DOCUMENTED, f"undocumented code {error.code}: {error}"
            assert codes is None or error.code in codes, (codes, error)
            return error
        assert codes is None, f"expected one of {sorted(codes)}, got {result!r:.200}"
        return result

    def written(self, doc: p2pdb.Document, expected: dict[str, Any]) -> None:
        assert identical(doc.to_dict(), expected), (doc.to_dict(), expected)
        self.model[doc.id] = expected
        self.revs[doc.id] = doc.revision
        self.snapshots = [*self.snapshots[-7:], doc]

    def removed(self, doc_id: str) -> None:
        del self.model[doc_id]
        del self.revs[doc_id]

    # -- writes ----------------------------------------------------------------------------

    @rule(doc=good_docs(), upsert=st.booleans())
    def insert_or_upsert(self, doc: dict[str, Any], upsert: bool) -> None:
        if upsert:
            self.written(self.call(lambda: self.col.upsert(doc)), doc)
        elif doc["id"] in self.model:
            error = self.call(lambda: self.col.insert(doc), frozenset({"DOCUMENT_EXISTS"}))
            assert isinstance(error, ConflictError) and error.document is not None
            assert identical(
                {k: v for k, v in error.document.items() if not k.startswith("_")},
                self.model[doc["id"]],
            )
        else:
            self.written(self.call(lambda: self.col.insert(doc)), doc)

    @rule(bad=bad_docs(), upsert=st.booleans())
    def write_a_bad_document(self, bad: tuple[Any, frozenset[str]], upsert: bool) -> None:
        doc, codes = bad
        write = self.col.upsert if upsert else self.col.insert
        assert isinstance(self.call(lambda: write(doc), codes), ValidationError)

    @rule(
        docs=st.lists(good_docs() | bad_docs(), max_size=5),
        upsert=st.booleans(),
    )
    def bulk(self, docs: list[Any], upsert: bool) -> None:
        inputs = [d[0] if isinstance(d, tuple) else d for d in docs]
        write = self.col.bulk_upsert if upsert else self.col.bulk_insert
        result = self.call(lambda: write(inputs))
        assert isinstance(result, p2pdb.BulkWriteResult)
        failed = {e.parameters["index"]: e for e in result.errors}
        assert len(failed) + len(result.success) == len(inputs)
        successes = iter(result.success)
        for index, item in enumerate(docs):
            if isinstance(item, tuple):  # a bad document: refused with its code
                assert index in failed and failed[index].code in item[1], failed.get(index)
            elif not upsert and item["id"] in self.model:
                assert index in failed and failed[index].code == "DOCUMENT_EXISTS"
            else:
                assert index not in failed, failed[index]
                self.written(next(successes), item)
            if index in failed:
                assert failed[index].code in DOCUMENTED
                self.run_.codes[failed[index].code] += 1

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data(), changes=fields())
    def patch(self, data: st.DataObject, changes: dict[str, Any]) -> None:
        doc = data.draw(st.sampled_from(self.snapshots))
        if doc.id not in self.model:
            self.call(lambda: doc.patch(changes), frozenset({"DOCUMENT_NOT_FOUND"}))
            return
        expected = {**self.model[doc.id], **changes}
        self.written(self.call(lambda: doc.patch(changes)), expected)

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data(), key=EXTRA_KEYS, value=VALUES, drop=st.booleans())
    def modify(self, data: st.DataObject, key: str, value: Any, drop: bool) -> None:
        doc = data.draw(st.sampled_from(self.snapshots))

        def change(current: dict[str, Any]) -> dict[str, Any]:
            if drop:
                current.pop(key, None)
            else:
                current[key] = value
            return current

        if doc.id not in self.model:
            self.call(lambda: doc.modify(change), frozenset({"DOCUMENT_NOT_FOUND"}))
            return
        expected = change(dict(self.model[doc.id]))
        self.written(self.call(lambda: doc.modify(change)), expected)

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data(), changes=fields())
    def replace(self, data: st.DataObject, changes: dict[str, Any]) -> None:
        doc = data.draw(st.sampled_from(self.snapshots))
        new = {"id": doc.id, **changes}
        if self.revs.get(doc.id) != doc.revision:  # stale, or removed since
            self.call(lambda: doc.replace(new), frozenset({"CONFLICT"}))
            return
        self.written(self.call(lambda: doc.replace(new)), new)

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        doc = data.draw(st.sampled_from(self.snapshots))
        if doc.id not in self.model:
            error = self.call(doc.remove, frozenset({"DOCUMENT_NOT_FOUND"}))
            assert isinstance(error, NotFoundError)
            return
        tombstone = self.call(doc.remove)
        assert tombstone.deleted and tombstone.id == doc.id
        self.removed(doc.id)

    @rule(selector=SELECTORS)
    def remove_by_selector(self, selector: dict[str, Any]) -> None:
        expected = {i for i, d in self.model.items() if model_matches(d, selector)}
        tombstones = self.call(lambda: self.col.remove(selector))
        assert {d.id for d in tombstones} == expected and all(d.deleted for d in tombstones)
        for doc_id in expected:
            self.removed(doc_id)

    # -- reads -----------------------------------------------------------------------------

    @rule(
        selector=SELECTORS,
        sort=SORTS,
        skip=st.integers(0, 3),
        limit=st.none() | st.integers(0, 4),
    )
    def find(self, selector: dict[str, Any], sort: Any, skip: int, limit: int | None) -> None:
        matching = [d for d in self.model.values() if model_matches(d, selector)]
        order = model_order(matching, sort)
        expected = order[skip:] if limit is None else order[skip : skip + limit]
        found = self.call(lambda: self.col.find(selector, sort, skip, limit))
        assert [d.id for d in found] == expected, (selector, sort, skip, limit)
        for doc in found:
            assert identical(doc.to_dict(), self.model[doc.id])
        assert self.call(lambda: self.col.count(selector)) == len(matching)
        first = self.call(lambda: self.col.find_one(selector, sort))
        assert (first and first.id) == (order[0] if order else None)

    @rule(doc_id=IDS, more=st.lists(IDS, max_size=3))
    def by_id(self, doc_id: str, more: list[str]) -> None:
        found = self.call(lambda: self.col.find_one(doc_id))
        if doc_id in self.model:
            assert found is not None and identical(found.to_dict(), self.model[doc_id])
        else:
            assert found is None
        by_ids = self.call(lambda: self.col.find_by_ids([doc_id, *more]))
        assert set(by_ids) == {i for i in [doc_id, *more] if i in self.model}

    @rule(
        selector=JUNK,
        sort=JUNK | SORTS,
        skip=st.one_of(st.just(0), st.just(0), st.integers(0, 2), JUNK),
        limit=st.one_of(st.none(), st.none(), st.integers(0, 3), JUNK),
    )
    def junk_query(self, selector: Any, sort: Any, skip: Any, limit: Any) -> None:
        """Malformed arguments raise a documented QueryError; what passes must agree with
        the Python evaluator on the model's documents (the differential check)."""
        found = self.call(lambda: self.col.find(selector, sort, skip, limit))
        if isinstance(found, P2PDBError):
            assert found.code.startswith("QUERY_"), found
            return
        compiled = compile_query(selector, sort, primary_key="id", field_types={"n": "integer"})
        expected = sorted(
            (d for d in self.model.values() if compiled.matches(d)), key=compiled.sort_key
        )
        ids = [d["id"] for d in expected][skip:]
        assert [d.id for d in found] == (ids if limit is None else ids[:limit])

    @precondition(lambda self: self.snapshots)
    @rule(data=st.data(), junk=JUNK)
    def bad_arguments(self, data: st.DataObject, junk: Any) -> None:
        """Junk where a document, changes, a function, ids or a selector go."""
        doc = data.draw(st.sampled_from(self.snapshots))
        col = self.col
        calls: list[Callable[[], Any]] = [
            lambda: col.insert(junk),
            lambda: col.upsert(junk),
            lambda: col.bulk_insert(junk),
            lambda: col.find_by_ids(junk),
            lambda: col.find_one(junk),
            lambda: col.count(junk),
            lambda: col.remove(junk),
            lambda: doc.patch(junk),
            lambda: doc.modify(junk),
            lambda: doc.replace(junk),
            lambda: col.stored_state(junk),
        ]
        make = data.draw(st.sampled_from(calls))
        result = self.call(make)
        if isinstance(result, P2PDBError):
            return  # refused (checked in call)
        # a junk argument that was accepted: only reads and writes of valid data
        if make is calls[6]:  # remove(junk) with a valid selector: what matched is gone
            for tombstone in result:
                self.removed(tombstone.id)
        elif isinstance(result, p2pdb.Document) and not result.deleted:
            self.written(result, result.to_dict())
        elif isinstance(result, p2pdb.BulkWriteResult):
            for written in result.success:
                self.written(written, written.to_dict())

    # -- the invariant ---------------------------------------------------------------------

    @invariant()
    def stored_equals_model(self) -> None:
        stored = self.run_.run(_await(self.col.find()))
        assert [d.id for d in stored] == sorted(self.model)
        for doc in stored:
            assert identical(doc.to_dict(), self.model[doc.id]), doc.id


async def _await(awaitable: Any) -> Any:
    return await awaitable


def test_the_api_against_a_model(tmp_path: Path) -> None:
    run = Run(tmp_path / "fuzz.db")
    ApiMachine.run_ = run
    longer = EXAMPLES > 0
    try:
        run_state_machine_as_test(
            ApiMachine,
            settings=settings(
                max_examples=EXAMPLES or 25,
                stateful_step_count=STEPS,
                deadline=None,
                derandomize=not longer,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        run.loop.run_until_complete(run.db.close())
        run.loop.close()
    with sqlite3.connect(run.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    print(
        f"\nfuzzed {run.operations} operations in {run.collections} examples; "
        f"codes: {dict(run.codes.most_common())}"
    )
    assert run.operations > 0 and run.codes  # bad arguments were tried and refused
