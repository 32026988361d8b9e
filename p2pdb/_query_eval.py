"""The Python side of compiled queries: selector nodes as predicates, and sort keys.

``p2pdb.query`` builds these for :class:`~p2pdb.query.CompiledQuery` (``matches``,
``residual`` and ``sort_key``); the rules are the ones its docstring lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from ._query_sql import MISSING, And, Cond, ElemMatch, Node, Not, compare_scalars, kind_of

__all__ = ["Descending", "evaluator", "get_path", "json_equal", "sort_value"]


def get_path(root: Any, path: str) -> Any:
    """The value at a dotted path (walking objects only), or MISSING."""
    value = root
    if path:
        for segment in path.split("."):
            if not isinstance(value, Mapping):
                return MISSING
            value = value.get(segment, MISSING)
    return value


def json_equal(a: Any, b: Any) -> bool:
    """Deep JSON equality: booleans differ from numbers, 1 == 1.0, key order is ignored."""
    kind = kind_of(a)
    if kind != kind_of(b):
        return False
    if kind == "array":
        return len(a) == len(b) and all(map(json_equal, a, b))
    if kind == "object":
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    return bool(a == b)


def any_element(value: Any, test: Callable[[Any], bool]) -> bool:
    """Mongo's field rule: the value matches, or one element of an array value does."""
    return test(value) or (isinstance(value, list) and any(map(test, value)))


def field_test(op: str, operand: Any) -> Callable[[Any], bool]:
    """The test a condition applies to the value of its field (possibly MISSING)."""
    if op == "$eq" or (op in ("$gte", "$lte") and operand is None):
        if operand is None:
            return lambda v: v is MISSING or any_element(v, lambda e: e is None)
        return lambda v: any_element(v, lambda e: json_equal(e, operand))
    if op in ("$gt", "$lt", "$gte", "$lte"):
        if operand is None:
            return lambda v: False  # nothing is greater or less than null
        return lambda v: any_element(v, lambda e: compare_scalars(e, op, operand))
    if op == "$in":
        tests = [field_test("$eq", x) for x in operand]
        return lambda v: any(t(v) for t in tests)
    if op == "$exists":
        return lambda v: (v is not MISSING) is operand
    if op == "$size":
        return lambda v: isinstance(v, list) and len(v) == operand
    if op == "$regex":
        return lambda v: any_element(v, lambda e: isinstance(e, str) and bool(operand.search(e)))
    sub: ElemMatch = operand  # $elemMatch
    test = evaluator(sub.node)
    return lambda v: isinstance(v, list) and any(
        (isinstance(e, Mapping) or not sub.objects_only) and test(e) for e in v
    )


def evaluator(node: Node) -> Callable[[Any], bool]:
    """A Python predicate over a document (or an array element) for ``node``."""
    if isinstance(node, Cond):
        path, test = node.path, field_test(node.op, node.operand)
        return lambda root: test(get_path(root, path))
    if isinstance(node, Not):
        inner = evaluator(node.child)
        return lambda root: not inner(root)
    children = [evaluator(c) for c in node.children]
    if isinstance(node, And):
        return lambda root: all(c(root) for c in children)
    return lambda root: any(c(root) for c in children)


_RANKS: Final = {"null": 0, "number": 1, "string": 2, "object": 3, "array": 4, "bool": 5}


def sort_value(value: Any) -> tuple[int, Any]:
    """A sort key component: the type rank, then the value within numbers, strings, bools."""
    rank = _RANKS.get(kind_of(value), 0)  # missing sorts with null
    return (rank, value if rank in (1, 2, 5) else None)


class Descending:
    """Reverses the order of a sort key component."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[int, Any]) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Descending) and self.key == other.key

    def __lt__(self, other: Descending) -> bool:
        return bool(other.key < self.key)
