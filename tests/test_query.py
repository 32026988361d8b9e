"""Unit tests of the Mango selector compiler: each operator (through SQLite and in Python),
sorting, the error codes, and index use."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from p2pdb.errors import QueryError, ValidationError
from p2pdb.query import QUERY_ERROR_CODES, CompiledQuery, compile_query, path_expression

DOCS: list[dict[str, Any]] = [
    {"id": "a", "n": 1, "s": "apple", "tags": ["x", "y"], "o": {"k": 1, "t": "p"}, "b": True},
    {"id": "b", "n": 2.5, "s": "Banana", "tags": ["y"], "o": {"k": 2}, "b": False},
    {"id": "c", "n": "3", "s": "cherry", "tags": [], "o": {"k": None}, "z": None},
    {"id": "d", "n": None, "s": "été", "tags": "x", "o": "flat"},
    {"id": "e", "n": [1, 5], "tags": [["x"], "z"], "o": {"k": [1, 2]}, "b": 1},
    {"id": "f"},
]


def run(
    selector: Mapping[str, Any] | None,
    sort: Sequence[Mapping[str, str]] | None = None,
    docs: Sequence[Any] = DOCS,
    **options: Any,
) -> list[str]:
    """The ids a query selects, in order; checks that SQLite and Python agree."""
    query = compile_query(selector, sort, primary_key="id", **options)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, seq INTEGER, deleted INTEGER, body TEXT)")
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, 0, ?)",
        [(d["id"], i, orjson.dumps(d).decode()) for i, d in enumerate(docs)],
    )
    sql = f"SELECT body FROM t WHERE deleted = 0 AND ({query.where_sql}) ORDER BY {query.order_sql}"
    rows = [orjson.loads(b) for (b,) in conn.execute(sql, query.where_params)]
    conn.close()
    if query.residual is not None:
        rows = [r for r in rows if query.residual(r)]
    python = [d["id"] for d in sorted(filter(query.matches, docs), key=query.sort_key)]
    assert [r["id"] for r in rows] == python
    return python


def matching(selector: Mapping[str, Any], **options: Any) -> set[str]:
    return set(run(selector, **options))


# ---------------------------------------------------------------------------- paths


def test_path_expression() -> None:
    assert path_expression("n", primary_key="id") == "json_extract(body, '$.n')"
    assert path_expression("a.b", primary_key="id") == "json_extract(body, '$.a.b')"
    assert path_expression("id", primary_key="id") == "id"
    assert path_expression("key", primary_key="key") == "id"
    assert path_expression("x-y.0", primary_key="id") == """json_extract(body, '$."x-y"."0"')"""


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a b", "é", "a'b", 'a"b', "a[0]", "a\\b"])
def test_path_expression_rejects_unsafe_paths(path: str) -> None:
    with pytest.raises(QueryError) as info:
        path_expression(path, primary_key="id")
    assert info.value.code == "QUERY_UNSUPPORTED_PATH"


def test_unsafe_paths_are_queried_in_python_only() -> None:
    docs = [{"id": "1", "it's": "x'); DROP TABLE t; --"}, {"id": "2", "é": 1}]
    query = compile_query({"it's": "x'); DROP TABLE t; --"}, primary_key="id")
    assert query.where_sql == "1" and query.residual is not None
    assert run({"it's": "x'); DROP TABLE t; --"}, docs=docs) == ["1"]
    assert run({"é": {"$gte": 1}}, docs=docs) == ["2"]


def test_values_are_bound_parameters() -> None:
    query = compile_query({"s": "x' OR 1=1 --"}, primary_key="id")
    assert "x'" not in query.where_sql
    assert "x' OR 1=1 --" in query.where_params
    assert run({"s": "x' OR 1=1 --"}) == []


def test_nested_paths_walk_objects_only() -> None:
    assert matching({"o.k": 1}) == {"a", "e"}  # e: o.k is [1, 2]
    assert matching({"o.t": "p"}) == {"a"}
    assert matching({"o.k": None}) == {"c", "d", "f"}  # null, or missing (d: o is a string)
    assert matching({"o.k.0": 1}) == set()  # array elements are not addressed by index
    assert matching({"tags.0": "x"}) == set()


# ---------------------------------------------------------------------------- operators


def test_empty_selector_matches_everything() -> None:
    selector: dict[str, Any] | None
    for selector in (None, {}):
        query = compile_query(selector, primary_key="id")
        assert query.where_sql == "1" and query.residual is None
        assert run(selector) == ["a", "b", "c", "d", "e", "f"]


def test_eq_is_implicit_and_type_strict() -> None:
    assert matching({"n": 1}) == {"a", "e"} == matching({"n": {"$eq": 1}})
    assert matching({"n": 1.0}) == {"a", "e"}  # 1 == 1.0
    assert matching({"n": "3"}) == {"c"}  # strings are not numbers
    assert matching({"b": True}) == {"a"}  # true is not 1
    assert matching({"b": 1}) == {"e"}


def test_eq_matches_array_elements_and_whole_arrays() -> None:
    assert matching({"tags": "x"}) == {"a", "d"}
    assert matching({"tags": ["x", "y"]}) == {"a"}
    assert matching({"tags": ["y", "x"]}) == set()  # array equality is ordered
    assert matching({"tags": ["x"]}) == {"e"}  # an element equal to the operand
    assert matching({"tags": []}) == {"c"}


def test_eq_on_objects_is_deep_and_ignores_key_order() -> None:
    assert matching({"o": {"t": "p", "k": 1}}) == {"a"}
    assert matching({"o": {"k": 1}}) == set()
    assert matching({"o": {"k": 2.0}}) == {"b"}
    assert compile_query({"o": {"k": 2}}, primary_key="id").residual is not None


def test_null_matches_null_and_missing() -> None:
    assert matching({"z": None}) == {"a", "b", "c", "d", "e", "f"}
    assert matching({"n": None}) == {"d", "f"}
    assert matching({"n": {"$ne": None}}) == {"a", "b", "c", "e"}
    assert matching({"tags": {"$in": [None]}}) == {"f"}
    assert run({"x": None}, docs=[{"id": "1", "x": [1, None]}, {"id": "2", "x": [1]}]) == ["1"]


def test_ne_is_the_negation_of_eq() -> None:
    assert matching({"n": {"$ne": 1}}) == {"b", "c", "d", "f"}
    assert matching({"tags": {"$ne": "x"}}) == {"b", "c", "e", "f"}


def test_comparisons_use_type_brackets() -> None:
    assert matching({"n": {"$gt": 1}}) == {"b", "e"}  # not "3" (a string), e: 5 > 1
    assert matching({"n": {"$gte": 1}}) == {"a", "b", "e"}
    assert matching({"n": {"$lt": 2}}) == {"a", "e"}
    assert matching({"n": {"$lte": 2.5, "$gt": 2}}) == {"b", "e"}  # e: 1 <= 2.5, 5 > 2
    assert matching({"n": {"$gt": 1, "$lt": 2}}) == {"e"}  # 5 > 1 and 1 < 2: two elements
    assert matching({"n": {"$gt": "2"}}) == {"c"}
    assert matching({"s": {"$gte": "b", "$lt": "d"}}) == {"c"}  # code point order: "B" < "a"
    assert matching({"s": {"$lt": "a"}}) == {"b"}
    assert matching({"s": {"$gt": "z"}}) == {"d"}  # "é" > "z"
    assert matching({"b": {"$gt": False}}) == {"a"}
    assert matching({"b": {"$lte": True}}) == {"a", "b"}
    assert matching({"b": {"$gt": 0}}) == {"e"}


def test_comparisons_with_null() -> None:
    assert matching({"n": {"$gte": None}}) == {"d", "f"}
    assert matching({"n": {"$lte": None}}) == {"d", "f"}
    assert matching({"n": {"$gt": None}}) == set()
    assert matching({"n": {"$lt": None}}) == set()


def test_in_and_nin() -> None:
    assert matching({"n": {"$in": [1, "3"]}}) == {"a", "c", "e"}
    assert matching({"n": {"$in": [None, 2.5]}}) == {"b", "d", "f"}
    assert matching({"tags": {"$in": ["z", ["y"]]}}) == {"b", "e"}
    assert matching({"b": {"$in": [True, 1]}}) == {"a", "e"}
    assert matching({"n": {"$in": []}}) == set()
    assert matching({"n": {"$nin": [1, "3"]}}) == {"b", "d", "f"}
    assert matching({"n": {"$nin": []}}) == {"a", "b", "c", "d", "e", "f"}
    assert matching({"id": {"$in": ["a", "c", 3]}}) == {"a", "c"}


def test_exists() -> None:
    assert matching({"z": {"$exists": True}}) == {"c"}  # present, even null
    assert matching({"s": {"$exists": False}}) == {"e", "f"}
    assert matching({"o.k": {"$exists": True}}) == {"a", "b", "c", "e"}


def test_size() -> None:
    assert matching({"tags": {"$size": 2}}) == {"a", "e"}
    assert matching({"tags": {"$size": 0}}) == {"c"}
    assert matching({"s": {"$size": 0}}) == set()


def test_regex() -> None:
    assert matching({"s": {"$regex": "an"}}) == {"b"}
    assert matching({"s": {"$regex": "^b", "$options": "i"}}) == {"b"}
    assert matching({"s": {"$regex": "(?i)^B"}}) == {"b"}
    assert matching({"s": {"$regex": "^é"}}) == {"d"}
    assert matching({"tags": {"$regex": "^[xz]$"}}) == {"a", "d", "e"}  # array elements
    assert matching({"n": {"$regex": "3"}}) == {"c"}  # only strings
    assert matching({"s": {"$regex": "A P P", "$options": "ix"}}) == {"a"}
    docs = [{"id": "1", "t": "one\ntwo"}]
    assert run({"t": {"$regex": "^two"}}, docs=docs) == []
    assert run({"t": {"$regex": "^two", "$options": "m"}}, docs=docs) == ["1"]
    assert run({"t": {"$regex": "one.two", "$options": "s"}}, docs=docs) == ["1"]
    assert compile_query({"s": {"$regex": "a"}}, primary_key="id").residual is not None


def test_not() -> None:
    assert matching({"n": {"$not": {"$gt": 1}}}) == {"a", "c", "d", "f"}
    assert matching({"s": {"$not": {"$regex": "^[a-c]"}}}) == {"b", "d", "e", "f"}
    assert matching({"n": {"$not": {"$gte": 1, "$lte": 2}}}) == {"b", "c", "d", "f"}


def test_elem_match() -> None:
    assert matching({"n": {"$elemMatch": {"$gt": 1, "$lt": 5}}}) == set()
    assert matching({"n": {"$elemMatch": {"$gt": 1, "$lte": 5}}}) == {"e"}
    assert matching({"tags": {"$elemMatch": {"$eq": "y"}}}) == {"a", "b"}
    docs = [
        {"id": "1", "items": [{"sku": "a", "q": 1}, {"sku": "b", "q": 5}]},
        {"id": "2", "items": [{"sku": "a", "q": 5}]},
        {"id": "3", "items": {"sku": "a", "q": 5}},
        {"id": "4", "items": ["a", 5]},
    ]
    assert run({"items": {"$elemMatch": {"sku": "a", "q": {"$gt": 2}}}}, docs=docs) == ["2"]
    assert run({"items": {"$elemMatch": {"$or": [{"q": 1}, {"sku": "z"}]}}}, docs=docs) == ["1"]
    assert run({"items": {"$elemMatch": {"x": None}}}, docs=docs) == ["1", "2"]  # objects only


def test_logical_operators() -> None:
    assert matching({"$and": [{"n": {"$gt": 0}}, {"b": True}]}) == {"a"}
    assert matching({"$or": [{"n": 1}, {"s": "cherry"}]}) == {"a", "c", "e"}
    assert matching({"$nor": [{"n": 1}, {"s": "cherry"}]}) == {"b", "d", "f"}
    assert matching({"$or": [{"n": 1}, {"s": {"$regex": "^ch"}}]}) == {"a", "c", "e"}
    assert matching({"s": {"$regex": "[eé]"}, "$or": [{"n": 1}, {"n": None}]}) == {"a", "d"}


def test_sql_covers_what_it_can_and_leaves_the_rest_to_python() -> None:
    query = compile_query(
        {"n": {"$gt": 1}, "s": {"$regex": "a"}, "$or": [{"b": True}, {"z": None}]},
        primary_key="id",
    )
    assert "json_extract(body, '$.n') > ?" in query.where_sql
    assert "$.b" in query.where_sql and "$.s" not in query.where_sql
    assert query.residual is not None
    assert query.residual({"s": "a"}) and not query.residual({"s": "b"})
    assert not query.matches({"s": "a", "n": 0})


def test_paths_lists_every_field_named() -> None:
    query = compile_query(
        {"a.b": 1, "$or": [{"c": 1}, {"items": {"$elemMatch": {"x": 1}}}]},
        [{"d": "asc"}],
        primary_key="id",
    )
    assert query.paths == frozenset({"a.b", "c", "items", "d"})


# ---------------------------------------------------------------------------- field types


def test_field_types_give_plain_indexable_sql() -> None:
    types = {"n": "integer", "s": "string", "f": "boolean", "x": "number"}
    query = compile_query(
        {"n": {"$gt": 5, "$lte": 10}, "s": {"$in": ["a", "b"]}, "f": True},
        [{"x": "desc"}],
        primary_key="id",
        field_types=types,
    )
    assert query.where_sql == (
        "(json_extract(body, '$.n') > ? AND json_extract(body, '$.n') <= ? AND "
        "json_extract(body, '$.s') IN (?, ?) AND json_extract(body, '$.f') = ?)"
    )
    assert query.where_params == (5, 10, "a", "b", True)
    assert query.order_sql == "json_extract(body, '$.x') DESC, id DESC"
    assert query.residual is None


def test_field_types_with_operands_of_another_type() -> None:
    docs = [{"id": "1", "n": 1}, {"id": "2"}, {"id": "3", "n": 7}]
    types = {"n": "integer"}
    assert run({"n": "1"}, docs=docs, field_types=types) == []
    assert run({"n": {"$ne": "1"}}, docs=docs, field_types=types) == ["1", "2", "3"]
    assert run({"n": {"$gt": True}}, docs=docs, field_types=types) == []
    assert run({"n": None}, docs=docs, field_types=types) == ["2"]
    assert run({"n": {"$in": [7, None, "x"]}}, docs=docs, field_types=types) == ["2", "3"]
    assert run({"n": {"$size": 0}}, docs=docs, field_types=types) == []
    assert run({"n": {"$exists": True}}, docs=docs, field_types=types) == ["1", "3"]


def test_primary_key_uses_the_id_column() -> None:
    query = compile_query({"id": {"$gte": "b", "$lt": "d"}}, primary_key="id")
    assert query.where_sql == "(id >= ? AND id < ?)"
    assert run({"id": {"$gte": "b", "$lt": "d"}}) == ["b", "c"]
    assert run({"id": {"$gt": 1}}) == []
    assert run({"id": {"$ne": None}}) == ["a", "b", "c", "d", "e", "f"]


# ---------------------------------------------------------------------------- sorting


def test_sort_across_types() -> None:
    docs = [
        {"id": "bool-f", "v": False},
        {"id": "bool-t", "v": True},
        {"id": "arr", "v": [0]},
        {"id": "obj", "v": {"a": 1}},
        {"id": "str-b", "v": "b"},
        {"id": "str-B", "v": "B"},
        {"id": "num-2", "v": 2},
        {"id": "num-1.5", "v": 1.5},
        {"id": "num-10", "v": 10},
        {"id": "null", "v": None},
        {"id": "missing"},
    ]
    order = [
        "missing", "null", "num-1.5", "num-2", "num-10", "str-B", "str-b", "obj", "arr",
        "bool-f", "bool-t",
    ]  # fmt: skip
    assert run(None, [{"v": "asc"}], docs=docs) == order
    # descending: every key reversed, ties (missing/null) broken by id descending too
    assert run(None, [{"v": "desc"}], docs=docs) == order[::-1]


def test_sort_ties_are_broken_by_id() -> None:
    docs = [{"id": i, "v": v} for i, v in [("c", 1), ("a", 1.0), ("b", 0), ("d", {"x": 2})]]
    docs.append({"id": "e", "v": {"x": 1}})
    assert run(None, [{"v": "asc"}], docs=docs) == ["b", "a", "c", "d", "e"]
    assert run(None, [{"v": "desc"}], docs=docs) == ["e", "d", "c", "a", "b"]
    assert run(None, [{"v": "asc"}, {"id": "desc"}], docs=docs) == ["b", "c", "a", "e", "d"]


def test_sort_by_several_fields() -> None:
    docs = [
        {"id": "1", "g": "x", "n": 2},
        {"id": "2", "g": "y", "n": 1},
        {"id": "3", "g": "x", "n": 3},
        {"id": "4", "g": "y"},
    ]
    assert run(None, [{"g": "asc"}, {"n": "desc"}], docs=docs) == ["3", "1", "2", "4"]
    assert run(None, [{"g": "desc"}, {"n": "asc"}], docs=docs) == ["4", "2", "1", "3"]
    assert run({"n": {"$gt": 1}}, [{"n": "asc"}], docs=docs, field_types={"n": "integer"}) == [
        "1",
        "3",
    ]


def test_order_sql_ends_with_the_id() -> None:
    def order(sort: list[dict[str, str]]) -> str:
        return compile_query(None, sort, primary_key="id").order_sql

    assert order([]) == "id ASC"
    assert order([{"id": "desc"}]) == "id DESC"
    assert order([{"id": "asc"}, {"n": "desc"}]).endswith(", id DESC")
    assert compile_query(None, [{"n": "asc"}], primary_key="id").sort_key({"id": "x"})


def test_sort_key_is_usable_with_sorted() -> None:
    query: CompiledQuery = compile_query(None, [{"v": "desc"}], primary_key="id")
    docs: list[dict[str, Any]] = [{"id": "a", "v": 1}, {"id": "b", "v": "x"}, {"id": "c"}]
    assert [d["id"] for d in sorted(docs, key=query.sort_key)] == ["b", "a", "c"]


# ---------------------------------------------------------------------------- errors

ERROR_CASES: list[tuple[Any, Any, str]] = [
    ([{"a": 1}], None, "QUERY_INVALID_SELECTOR"),
    ({"$or": [1]}, None, "QUERY_INVALID_SELECTOR"),
    ({"a": {"$elemMatch": {"b": 1, "$or": [2]}}}, None, "QUERY_INVALID_SELECTOR"),
    ({"a": {"$foo": 1}}, None, "QUERY_UNKNOWN_OPERATOR"),
    ({"$where": "1"}, None, "QUERY_UNKNOWN_OPERATOR"),
    ({"$gt": 1}, None, "QUERY_OPERATOR_WRONG_LEVEL"),
    ({"a": {"$or": [{"b": 1}]}}, None, "QUERY_OPERATOR_WRONG_LEVEL"),
    ({"a": {"$gt": 1, "b": 2}}, None, "QUERY_MIXED_OPERATORS"),
    ({"a": {"$in": 1}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$nin": "ab"}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$size": "1"}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$size": True}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$size": -1}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$exists": 1}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$gt": [1]}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$lt": {"b": 1}}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$eq": float("nan")}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$in": [{1, 2}]}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": object()}, None, "QUERY_INVALID_OPERAND"),
    ({"$and": []}, None, "QUERY_INVALID_OPERAND"),
    ({"$or": {"a": 1}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$not": 1}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$not": {}}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$not": {"b": 1}}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$elemMatch": []}}, None, "QUERY_INVALID_OPERAND"),
    ({"a": {"$regex": "("}}, None, "QUERY_INVALID_REGEX"),
    ({"a": {"$regex": 1}}, None, "QUERY_INVALID_REGEX"),
    ({"a": {"$regex": "a", "$options": "g"}}, None, "QUERY_INVALID_REGEX"),
    ({"a": {"$options": "i"}}, None, "QUERY_INVALID_REGEX"),
    ({"a..b": 1}, None, "QUERY_INVALID_PATH"),
    ({"a.$b": 1}, None, "QUERY_INVALID_PATH"),
    ({1: 1}, None, "QUERY_INVALID_PATH"),
    (None, [{"a": "up"}], "QUERY_INVALID_SORT_DIRECTION"),
    (None, [{"a": 1}], "QUERY_INVALID_SORT_DIRECTION"),
    (None, [{"a": "asc", "b": "desc"}], "QUERY_INVALID_SORT"),
    (None, [{}], "QUERY_INVALID_SORT"),
    (None, {"a": "asc"}, "QUERY_INVALID_SORT"),
    (None, "a", "QUERY_INVALID_SORT"),
    (None, [{"": "asc"}], "QUERY_INVALID_PATH"),
    (None, [{"é": "asc"}], "QUERY_UNSUPPORTED_PATH"),
    ({"secret": 1}, None, "QUERY_ENCRYPTED_FIELD"),
    ({"secret.x": {"$exists": True}}, None, "QUERY_ENCRYPTED_FIELD"),
    ({"card": {"number": 1}}, None, "QUERY_ENCRYPTED_FIELD"),
    ({"$or": [{"a": 1}, {"secret": 2}]}, None, "QUERY_ENCRYPTED_FIELD"),
    ({"card": {"$elemMatch": {"number": 1}}}, None, "QUERY_ENCRYPTED_FIELD"),
    (None, [{"secret": "asc"}], "QUERY_ENCRYPTED_FIELD"),
]


@pytest.mark.parametrize(("selector", "sort", "code"), ERROR_CASES)
def test_malformed_queries_raise_specific_codes(selector: Any, sort: Any, code: str) -> None:
    with pytest.raises(QueryError) as info:
        compile_query(selector, sort, primary_key="id", forbidden_paths=["secret", "card.number"])
    assert info.value.code == code
    assert isinstance(info.value, ValidationError)
    assert len(info.value.message) > 20


def test_every_error_code_is_listed_and_tested() -> None:
    assert sorted(QUERY_ERROR_CODES) == sorted({code for _, _, code in ERROR_CASES})


def test_encrypted_field_error_says_what_is_wrong() -> None:
    with pytest.raises(QueryError, match="encrypted and cannot be queried") as info:
        compile_query({"secret": 1}, primary_key="id", forbidden_paths=["secret"])
    assert info.value.parameters == {"path": "secret"}
    compile_query({"secretive": 1}, primary_key="id", forbidden_paths=["secret"])  # no error


# ---------------------------------------------------------------------------- indexes


def explain(conn: sqlite3.Connection, query: CompiledQuery) -> str:
    sql = (
        f"SELECT body FROM docs WHERE deleted = 0 AND ({query.where_sql}) "
        f"ORDER BY {query.order_sql} LIMIT 10"
    )
    plan = conn.execute("EXPLAIN QUERY PLAN " + sql, query.where_params).fetchall()
    return "\n".join(row[-1] for row in plan)


@pytest.mark.parametrize("declared", ["integer", "number"])
def test_expression_index_serves_filter_and_sort(tmp_path: Path, declared: str) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    conn.execute(
        "CREATE TABLE docs (id TEXT PRIMARY KEY, seq INTEGER, deleted INTEGER, body TEXT)"
    )
    expr = path_expression("n", primary_key="id")
    conn.execute(f"CREATE INDEX ix ON docs({expr}) WHERE deleted = 0")
    conn.executemany(
        "INSERT INTO docs VALUES (?, ?, ?, ?)",
        [(f"d{i}", i, int(i % 5 == 0), orjson.dumps({"id": f"d{i}", "n": i % 50}).decode())
         for i in range(500)],
    )  # fmt: skip
    conn.execute("ANALYZE")
    queries = [
        compile_query(
            {"n": {"$gt": 5}}, [{"n": direction}], primary_key="id", field_types={"n": declared}
        )
        for direction in ("asc", "desc")
    ]
    for query in queries:
        plan = explain(conn, query)
        assert "SEARCH docs USING INDEX ix (<expr>>?)" in plan, plan
        # the index gives the order; at most the id tiebreak is sorted ("RIGHT PART")
        assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan

    # an index on (field, id) serves the id tiebreaker too: no sorting at all
    conn.execute(f"CREATE INDEX ix_id ON docs({expr}, id) WHERE deleted = 0")
    conn.execute("ANALYZE")
    for query in queries:
        plan = explain(conn, query)
        assert "SEARCH docs USING INDEX ix_id (<expr>>?)" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    conn.close()
