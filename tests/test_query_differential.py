"""Differential tests: the SQL a query compiles to (plus its residual) must select and order
exactly what the Python evaluator does, on random documents, selectors and sorts."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdb.query import compile_query

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# ---------------------------------------------------------------------------- values

strings = st.one_of(
    st.sampled_from(["", "a", "b", "ab", "B", "é", "ß", "😀", "a b", "'", '"', "\\", "\n"]),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=4),
)
numbers = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([0.5, 1.0, -0.0, 2.0, 2**53, 2**53 + 1, 2.0**53, 1e300, -(2**63), 2**63 - 1]),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
# A small pool shared by documents and operands, so that comparisons often hit.
common = st.sampled_from([None, True, False, 0, 1, 2, -1, 1.0, 1.5, "", "a", "b", "ab", "B", "é"])
scalars = st.one_of(common, common, common, st.none(), st.booleans(), numbers, strings)
keys = st.sampled_from(["a", "b", "x-y"])
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=2),
    max_leaves=5,
)
FIELDS = ["a", "b", "n", "x-y", "é"]


@st.composite
def documents(draw: st.DrawFn, body: st.SearchStrategy[dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to 8 documents with unique string ids (drawn so that their order matters)."""
    ids = draw(
        st.lists(st.text("aB9é😀", min_size=1, max_size=3), unique=True, min_size=3, max_size=8)
    )
    return [{**draw(body), "id": i} for i in ids]


operands = st.deferred(
    lambda: st.one_of(scalars, scalars, scalars, st.lists(scalars, max_size=2), values)
)
field_values = st.one_of(scalars, scalars, st.lists(scalars, max_size=3), values)
untyped_body = st.fixed_dictionaries(
    {},
    optional={
        **{f: field_values for f in FIELDS},
        "o": st.dictionaries(keys, field_values, max_size=3) | field_values,
    },
)


# ---------------------------------------------------------------------------- selectors


def operator_objects(paths_values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Operator objects like {"$gt": 1, "$ne": "a"} with operands from ``paths_values``."""
    operands_of: dict[str, st.SearchStrategy[Any]] = {
        "$eq": paths_values,
        "$ne": paths_values,
        "$gt": scalars,
        "$gte": scalars,
        "$lt": scalars,
        "$lte": scalars,
        "$in": st.lists(scalars, max_size=3) | st.lists(paths_values, max_size=3),
        "$nin": st.lists(scalars, max_size=3) | st.lists(paths_values, max_size=3),
        "$exists": st.booleans(),
        "$size": st.integers(0, 3),
        "$regex": st.sampled_from(["^a", "b$", "é", "(?i)a", "^$", ".", "A"]),
    }

    def entries(op: str) -> st.SearchStrategy[list[tuple[str, Any]]]:
        if op == "$regex":
            options = st.sampled_from(["", "i", "ms"])
            return st.tuples(operands_of[op], options).map(
                lambda t: [("$regex", t[0]), ("$options", t[1])]
            )
        return operands_of[op].map(lambda x: [(op, x)])

    # sampled_from then flatmap: operators are drawn evenly (one_of favours early branches)
    simple = st.sampled_from(sorted(operands_of)).flatmap(entries)

    def build(entries: list[list[tuple[str, Any]]]) -> dict[str, Any]:
        return dict(pair for entry in entries for pair in entry)

    flat = st.lists(simple, min_size=1, max_size=2).map(build)
    nested = st.one_of(
        flat.map(lambda ops: [("$not", ops)]),
        flat.map(lambda ops: [("$elemMatch", ops)]),
        st.dictionaries(keys, st.one_of(scalars, flat), min_size=1, max_size=2).map(
            lambda sub: [("$elemMatch", sub)]
        ),
    )
    return st.lists(st.one_of(simple, simple, nested), min_size=1, max_size=2).map(build)


def selectors(
    paths: Sequence[str], operands: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """Random selectors over ``paths``, combined with $and/$or/$nor."""
    objects = st.deferred(lambda: operator_objects(operands))  # deferred: keeps reprs short
    conditions = st.one_of(objects, objects, operands)
    leaf = st.dictionaries(st.sampled_from(paths), conditions, min_size=1, max_size=2)
    return st.recursive(
        leaf,
        lambda inner: st.tuples(
            st.sampled_from(["$and", "$or", "$nor"]), st.lists(inner, min_size=1, max_size=3)
        ).map(lambda t: {t[0]: t[1]}),
        max_leaves=4,
    )


def sorts(paths: Sequence[str]) -> st.SearchStrategy[list[dict[str, str]]]:
    entry = st.tuples(st.sampled_from(paths), st.sampled_from(["asc", "desc"]))
    return st.lists(entry.map(lambda t: {t[0]: t[1]}), max_size=2)


# ---------------------------------------------------------------------------- the check


def check(
    docs: list[dict[str, Any]],
    queries: list[tuple[dict[str, Any], list[dict[str, str]]]],
    field_types: Mapping[str, str] = {},  # noqa: B006
) -> None:
    """Run each (selector, sort) the way the storage layer does, on a real SQLite table, and
    compare with the Python evaluator and sort key."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(
            "CREATE TABLE t (id TEXT PRIMARY KEY, seq INTEGER, deleted INTEGER, body TEXT)"
        )
        conn.executemany(
            "INSERT INTO t VALUES (?, ?, 0, ?)",
            [(d["id"], i, orjson.dumps(d).decode()) for i, d in enumerate(docs)],
        )
        conn.execute("INSERT INTO t VALUES ('zz-deleted', 99, 1, '{\"id\": \"zz-deleted\"}')")
        for selector, sort in queries:
            query = compile_query(selector, sort, primary_key="id", field_types=field_types)
            sql = (
                f"SELECT body FROM t WHERE deleted = 0 AND ({query.where_sql}) "
                f"ORDER BY {query.order_sql}"
            )
            rows = [orjson.loads(body) for (body,) in conn.execute(sql, query.where_params)]
            if query.residual is not None:
                rows = [r for r in rows if query.residual(r)]
            expected = sorted(filter(query.matches, docs), key=query.sort_key)
            assert [r["id"] for r in rows] == [d["id"] for d in expected], (selector, sort)
    finally:
        conn.close()


def queries(
    selector: st.SearchStrategy[dict[str, Any]],
    sort: st.SearchStrategy[list[dict[str, str]]],
    count: int,
) -> st.SearchStrategy[list[tuple[dict[str, Any], list[dict[str, str]]]]]:
    """Several queries per example: one table serves them all."""
    return st.lists(st.tuples(selector, sort), min_size=1, max_size=count)


UNTYPED_PATHS = [*FIELDS, *FIELDS, "o", "o.a", "o.x-y", "id", "o.a.b", "zz"]
UNTYPED_SORTS = sorts(["a", "b", "n", "o", "o.a", "x-y", "id"])


@SETTINGS
@given(
    docs=documents(untyped_body),
    queries=queries(selectors(UNTYPED_PATHS, operands), UNTYPED_SORTS, 4),
)
def test_random_selectors(
    docs: list[dict[str, Any]], queries: list[tuple[dict[str, Any], list[dict[str, str]]]]
) -> None:
    check(docs, queries)


TYPES = {"n": "number", "i": "integer", "s": "string", "f": "boolean", "o.s": "string"}
typed_body = st.fixed_dictionaries(
    {},
    optional={
        "n": st.sampled_from([-1, 0, 1, 1.0, 1.5, 2]) | numbers,
        "i": st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 3),
        "s": st.sampled_from(["", "a", "b", "ab", "B", "é"]) | strings,
        "f": st.booleans(),
        "o": st.fixed_dictionaries({}, optional={"s": strings}),
    },
)


@SETTINGS
@given(
    docs=documents(typed_body),
    queries=queries(
        selectors(["n", "i", "s", "f", "o.s", "id"], scalars),
        sorts(["n", "i", "s", "f", "o.s", "id"]),
        4,
    ),
)
def test_typed_fields(
    docs: list[dict[str, Any]], queries: list[tuple[dict[str, Any], list[dict[str, str]]]]
) -> None:
    check(docs, queries, TYPES)


# ---------------------------------------------------------------------------- exhaustive

POOL: list[Any] = [
    None, True, False, 0, 1, -1, 1.0, 1.5, 2, 2**53 + 1, 2.0**53, "", "a", "b", "B", "ab", "é",
    "😀", [], [1], [1, 2], [2, 1.5], ["a", "b"], [None], [True], [1, "a", False], [[1]],
    [{"a": 1}], {}, {"a": 1}, {"a": "a"}, {"a": None}, {"a": [1, "a"]}, {"b": 1, "a": 1},
]  # fmt: skip
SCALARS = [v for v in POOL if not isinstance(v, list | dict)]
OPERATORS: list[tuple[str, list[Any]]] = [
    ("$eq", POOL),
    ("$ne", POOL),
    *[(op, SCALARS) for op in ("$gt", "$gte", "$lt", "$lte")],
    ("$in", [[], *([v] for v in POOL), [None, 1], [True, "a", 1.5], [[1], 2], ["b", False]]),
    ("$nin", [[], [None], [1, "a"], [True], [[1, 2]]]),
    ("$exists", [True, False]),
    ("$size", [0, 1, 2]),
    ("$regex", ["^a", "(?i)^A", "b$", ""]),
    ("$elemMatch", [{"$gt": 1}, {"$eq": None}, {"a": 1}, {"a": {"$exists": False}}]),
]
EXHAUSTIVE_DOCS = [
    {"id": f"{i:02d}", "a": v, "o": {"a": v}} for i, v in enumerate(POOL)
] + [{"id": "m1"}, {"id": "m2", "o": 5}, {"id": "m3", "o": [{"a": 1}]}]


def test_every_operator_on_every_value() -> None:
    """Each operator and operand, plain and under $not, on every kind of value, at the top
    level and nested, sorted both ways."""
    for path in ("a", "o.a"):
        for op, operands in OPERATORS:
            for x in operands:
                check(
                    EXHAUSTIVE_DOCS,
                    [
                        ({path: {op: x}}, [{path: "asc"}]),
                        ({path: {"$not": {op: x}}}, [{path: "desc"}]),
                    ],
                )


TYPED_POOLS: dict[str, list[Any]] = {
    "n": [-1, 0, 1, 1.0, 1.5, 2, 2**53 + 1, 2.0**53, -(2**63)],
    "s": ["", "a", "b", "B", "ab", "é", "😀"],
    "f": [True, False],
}


def test_every_operator_on_typed_fields() -> None:
    """The fixed-type SQL (plain json_extract) agrees with Python on conforming documents,
    for operands of every type."""
    types = {"n": "number", "s": "string", "f": "boolean"}
    for path, pool in TYPED_POOLS.items():
        docs = [{"id": f"{i:02d}", path: v} for i, v in enumerate(pool)] + [{"id": "m"}]
        for op, operands in OPERATORS:
            for x in operands:
                check(docs, [({path: {op: x}}, [{path: "asc"}])], types)
                check(docs, [({path: {"$not": {op: x}}}, [{path: "desc"}])], types)
