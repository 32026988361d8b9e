"""json_copy's one-pass fast copy agrees with the checked slow path on every input: the
same copy, or the same error code and field (tests/test_values.py has the rules)."""

from __future__ import annotations

import enum
import uuid
from collections import OrderedDict
from typing import Any

import orjson
import pytest

from p2pdb.errors import ValidationError
from p2pdb.values import check_json_values, json_copy


class Color(enum.Enum):
    RED = "red"


class Text(str):
    pass


def nested(depth: int, leaf: Any = 1) -> Any:
    value: Any = leaf
    for _ in range(depth):
        value = [value]
    return value


CASES: list[Any] = [
    {"a": 1, "b": "x", "c": 1.5, "d": True, "e": None, "f": [1, "two", 3.0, False, None]},
    {"deep": {"er": {"est": [{"k": "v"}, [], {}]}}},
    {"text": "héllo ✓ 🎉", "ключ": "значение"},
    {"n": 2**63 - 1, "m": -(2**63)},
    {"n": 2**63},
    {"n": -(2**63) - 1},
    {"f": float("nan")},
    {"f": float("inf")},
    {"list": [float("-inf")]},
    {"s": "a\x00b"},
    {"a\x00": 1},
    {"inner": {"s": ["\x00"]}},
    {"s": "\ud800"},
    {"\udfff": 1},
    {"inner": [{"s": "x\ud800"}]},
    {1: "int key"},
    {"t": (1, 2, (3,))},
    {"sub": OrderedDict(a=1)},
    {"e": Color.RED},
    {"u": uuid.UUID(int=1)},
    {"s": Text("x")},
    {"b": b"bytes"},
    {"set": {1}},
    {"deep": nested(199)},
    {"deep": nested(250)},
    {"deep": nested(300)},
    {"f": -0.0, "g": 1e308, "h": 5e-324},
    {"ok": "a", "bad": [1, 2, float("nan")], "later": "\x00"},
]


def outcome(fn: Any, data: Any, **kw: Any) -> Any:
    try:
        return ("ok", fn(data, **kw))
    except ValidationError as exc:
        return ("error", exc.code, exc.parameters.get("field"))


def slow_copy(data: Any, **kw: Any) -> Any:
    check_json_values(data, **kw)
    try:
        return orjson.loads(orjson.dumps(data))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ValidationError(str(exc), code="DOCUMENT_NOT_JSON") from exc


@pytest.mark.parametrize("data", CASES, ids=range(len(CASES)))
def test_fast_copy_agrees_with_the_slow_path(data: Any) -> None:
    got = outcome(json_copy, data)
    assert got == outcome(slow_copy, data)
    if got[0] == "ok":
        assert orjson.dumps(got[1]) == orjson.dumps(orjson.loads(orjson.dumps(data)))


def test_some_cases_are_refused_and_some_accepted() -> None:
    kinds = {outcome(json_copy, d)[0] for d in CASES}
    assert kinds == {"ok", "error"}
    assert outcome(json_copy, {"s": "a\x00b"})[1:] == ("DOCUMENT_UNSUPPORTED_VALUE", "s")
    assert outcome(json_copy, {"inner": [{"s": "x\ud800"}]})[1:] == (
        "DOCUMENT_NOT_JSON",
        "inner.0.s",
    )


def test_the_copy_is_deep_and_exact() -> None:
    data = {"l": [{"x": [1]}], "d": {"y": "z"}}
    copy = json_copy(data)
    assert copy == data
    data["l"][0]["x"].append(2)  # type: ignore[index]
    data["d"]["y"] = "changed"  # type: ignore[index]
    assert copy == {"l": [{"x": [1]}], "d": {"y": "z"}}
    assert type(json_copy({"t": (1,)})["t"]) is list
    assert type(json_copy({"o": OrderedDict(a=1)})["o"]) is dict


def test_u0000_in_an_opaque_field_is_copied() -> None:
    assert json_copy({"secret": "a\x00b"}, opaque={"secret"}) == {"secret": "a\x00b"}
    with pytest.raises(ValidationError) as caught:
        json_copy({"secret": "a\x00b", "plain": "\x00"}, opaque={"secret"})
    assert caught.value.code == "DOCUMENT_UNSUPPORTED_VALUE"
