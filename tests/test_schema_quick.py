"""The quick schema pre-check is never looser than fastjsonschema: whatever it accepts,
fastjsonschema accepts; it covers the common schemas (the suite's and the benchmarks'), and
``Schema.validate`` still refuses with the same typed error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
from schemas import PEER_SCHEMA, TODO_SCHEMA

from p2pdb.errors import ValidationError
from p2pdb.schema import Schema
from p2pdb.schema_quick import compile_quick

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from _common import SCHEMA as BENCH_SCHEMA  # noqa: E402
from _common import make_docs  # noqa: E402

PLAIN = {"version", "primaryKey", "indexes", "encrypted", "keyCompression"}

RICH: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 10, "minLength": 1, "title": "key"},
        "n": {"type": "integer", "minimum": -5, "maximum": 5},
        "x": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1.5},
        "flag": {"type": "boolean"},
        "nothing": {"type": "null"},
        "any": {},
        "list": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer"}},
        "free": {"type": "array", "items": {}},
        "inner": {
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "required": ["a"],
            "additionalProperties": False,
        },
    },
    "required": ["id"],
}

DOCS: list[Any] = [
    {"id": "a"},
    {"id": ""},
    {"id": "a" * 10},
    {"id": "a" * 11},
    {"n": 1},
    {"id": 1},
    {"id": "a", "n": 5},
    {"id": "a", "n": 6},
    {"id": "a", "n": -5},
    {"id": "a", "n": 1.0},
    {"id": "a", "n": True},
    {"id": "a", "x": 0},
    {"id": "a", "x": 0.1},
    {"id": "a", "x": 1.5},
    {"id": "a", "x": "1"},
    {"id": "a", "flag": False},
    {"id": "a", "flag": 0},
    {"id": "a", "nothing": None},
    {"id": "a", "nothing": 0},
    {"id": "a", "any": [1, {"b": None}]},
    {"id": "a", "list": [1]},
    {"id": "a", "list": []},
    {"id": "a", "list": [1, 2, 3]},
    {"id": "a", "list": [1, "2"]},
    {"id": "a", "list": (1,)},
    {"id": "a", "free": [None, "x", {}]},
    {"id": "a", "inner": {"a": "x"}},
    {"id": "a", "inner": {"a": "x", "b": 1}},
    {"id": "a", "inner": {}},
    {"id": "a", "inner": []},
    {"id": "a", "extra": {"anything": 1}},
    {"id": "a", "text": "t", "done": "no"},
    {"id": "a", "text": "t", "tags": ["x", 1]},
    {"id": "a", "text": "t", "meta": {"owner": 3}},
    {"id": "a", "text": "t", "meta": {"owner": "me"}, "n": 0, "done": True},
    [],
    "doc",
    None,
]

SCHEMAS = [RICH, TODO_SCHEMA, PEER_SCHEMA, BENCH_SCHEMA]


def plain(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in PLAIN}


def fast_accepts(validator: Any, doc: Any) -> bool:
    try:
        validator(doc)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


@pytest.mark.parametrize("schema", SCHEMAS, ids=["rich", "todo", "peer", "bench"])
def test_quick_accepts_only_what_fastjsonschema_accepts(schema: dict[str, Any]) -> None:
    quick = compile_quick(plain(schema))
    assert quick is not None  # every one of these schemas is covered
    full = fastjsonschema.compile(plain(schema), use_formats=False)
    docs = DOCS + make_docs(50)
    verdicts = [(quick(doc), fast_accepts(full, doc)) for doc in docs]
    assert not [doc for doc, (q, f) in zip(docs, verdicts, strict=True) if q and not f]
    assert any(q for q, _ in verdicts) and any(not f for _, f in verdicts)
    # stricter only where exact types are concerned (1.0 as an integer, a tuple as an array)
    looser = [doc for doc, (q, f) in zip(docs, verdicts, strict=True) if f and not q]
    assert all(isinstance(doc, dict) and doc.get("n") == 1.0 or "list" in doc for doc in looser)


def test_quick_covers_the_benchmark_documents() -> None:
    quick = compile_quick(plain(BENCH_SCHEMA))
    assert quick is not None and all(quick(doc) for doc in make_docs(200))


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string", "enum": ["x"]}}},
        {"type": "object", "properties": {"a": {"type": "string", "default": "x"}}},
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}},
        {"type": "object", "properties": {"a": {"type": ["string", "null"]}}},
        {"type": "object", "properties": {"a": {"maxLength": 3}}},
        {"type": "object", "properties": {"a": {"type": "array", "items": [{}]}}},
        {"type": "object", "properties": {"a": {"type": "integer", "minimum": True}}},
        {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3.0}}},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "object", "properties": {"a": {"$ref": "#/definitions/x"}}},
    ],
    ids="enum default pattern types untyped tuple bool float extra ref".split(),
)
def test_other_keywords_get_no_quick_check(schema: dict[str, Any]) -> None:
    assert compile_quick(schema) is None


def test_validate_still_refuses_with_the_typed_error() -> None:
    schema = Schema({**RICH, "primaryKey": "id", "version": 0})
    schema.validate({"id": "a", "list": [1]})
    with pytest.raises(ValidationError) as caught:
        schema.validate({"id": "a", "list": [1, 2, 3]})
    assert (caught.value.code, caught.value.parameters["field"]) == ("DOCUMENT_INVALID", "list")
    with pytest.raises(ValidationError) as caught:
        schema.validate({"id": "a", "inner": {"a": "x", "b": 1}})
    assert caught.value.parameters["rule"] == "additionalProperties"
    schema.validate({"id": "a", "n": 1.0})  # stricter quick check, fastjsonschema decides
