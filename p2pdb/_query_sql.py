"""The selector tree of the query compiler, the JSON value rules, and the SQL translation.

Internal to :mod:`p2pdb.query`, which parses selectors into the nodes below, evaluates them
in Python, and asks :class:`SqlTranslator` for the parts SQLite can answer *exactly*.

Documents live in a table with the columns ``id`` (the primary key), ``deleted`` and
``body`` (the document as compact JSON). A field path ``a.b`` becomes
``json_extract(body, '$.a.b')`` (its value) and ``json_type(body, '$.a.b')`` (its JSON
type: ``integer``, ``real``, ``text``, ``true``, ``false``, ``null``, ``object``, ``array``,
or SQL NULL when missing). Path text is only inlined after :func:`json_path` has checked it;
every operand is a bound parameter.

Every generated predicate is exact: it selects a row if and only if the Python evaluator
matches the document. Predicates may yield SQL NULL where Python says False; negation
therefore uses ``(x) IS NOT 1``, which is exact under both readings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from .errors import QueryError

__all__ = [
    "MISSING",
    "And",
    "Cond",
    "ElemMatch",
    "Node",
    "Not",
    "Or",
    "SqlTranslator",
    "compare_scalars",
    "json_path",
    "kind_of",
]


class _Missing:
    """The value of a path that leads nowhere (distinct from JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

# ---------------------------------------------------------------------------- selector tree


@dataclass(frozen=True, slots=True)
class Cond:
    """One operator applied to one field: ``path`` ("" = the value itself, inside
    ``$elemMatch``), ``op`` (``$eq $gt $gte $lt $lte $in $exists $size $regex $elemMatch``)
    and its normalised operand (a tuple for ``$in``, a compiled pattern for ``$regex``,
    an :class:`ElemMatch` for ``$elemMatch``)."""

    path: str
    op: str
    operand: Any


@dataclass(frozen=True, slots=True)
class ElemMatch:
    """The operand of ``$elemMatch``: ``node`` is applied to each array element, either as
    a value (``objects_only=False``, paths are "") or as a sub-document (``True``)."""

    node: Node
    objects_only: bool


@dataclass(frozen=True, slots=True)
class And:
    """All children match (no children: everything matches)."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one child matches."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The child does not match (``$ne``, ``$nin``, ``$not`` and ``$nor`` become this)."""

    child: Node


Node: TypeAlias = Cond | And | Or | Not

# ---------------------------------------------------------------------------- JSON values

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def kind_of(value: Any) -> str:
    """The comparison bracket of a JSON value: ``missing``, ``null``, ``bool``, ``number``,
    ``string``, ``object`` or ``array``."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    return "array"


def compare_scalars(value: Any, op: str, operand: Any) -> bool:
    """``value <op> operand`` for a non-null scalar operand, with type bracketing: values
    of another bracket (booleans are not numbers) never compare."""
    if kind_of(value) != kind_of(operand):
        return False
    if op == "$eq":
        return bool(value == operand)
    if op == "$gt":
        return bool(value > operand)
    if op == "$gte":
        return bool(value >= operand)
    if op == "$lt":
        return bool(value < operand)
    return bool(value <= operand)  # $lte


def is_sql_scalar(value: Any) -> bool:
    """Whether a value can be bound as a SQLite parameter and compared exactly."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return True
    return isinstance(value, int) and INT64_MIN <= value <= INT64_MAX


# ---------------------------------------------------------------------------- paths

_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_BARE_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def json_path(path: str) -> str | None:
    """The SQLite JSON path for a dotted field path, or None when a segment holds anything
    but ASCII letters, digits, ``_`` and ``-`` (such text is never inlined into SQL).

    Identifier-like segments are written bare (``$.a.b``), others quoted (``$."x-y"``).
    """
    segments = path.split(".")
    if not path or not all(_SAFE_SEGMENT.fullmatch(s) for s in segments):
        return None
    return "$." + ".".join(s if _BARE_SEGMENT.fullmatch(s) else f'"{s}"' for s in segments)


# ---------------------------------------------------------------------------- SQL

Fragment: TypeAlias = tuple[str, tuple[Any, ...]]
TRUE: Final[Fragment] = ("1", ())
FALSE: Final[Fragment] = ("0", ())

_SQL_OPS: Final = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_EQ_LIKE: Final = frozenset({"$eq", "$gte", "$lte"})  # the operators where null matches null
_FIXED_KINDS: Final = {
    "number": "number",
    "integer": "number",
    "string": "string",
    "boolean": "bool",
}
_JSON_TYPES: Final = {"number": "IN ('integer', 'real')", "string": "= 'text'"}
_BOOL_TYPES: Final = ((False, "'false'"), (True, "'true'"))


@dataclass(frozen=True, slots=True)
class _Field:
    """A field as SQL sees it: ``value`` expression, and either ``kind`` (a fixed scalar
    bracket declared by the schema) or ``type`` (its ``json_type`` expression)."""

    value: str
    jpath: str = ""
    type: str = ""
    kind: str | None = None


def _join(parts: Sequence[Fragment], word: str) -> Fragment:
    if len(parts) == 1:
        return parts[0]
    sql = "(" + f" {word} ".join(p[0] for p in parts) + ")"
    return sql, tuple(x for p in parts for x in p[1])


def _or(parts: Sequence[Fragment]) -> Fragment:
    parts = [p for p in parts if p != FALSE]
    if TRUE in parts:
        return TRUE
    return _join(parts, "OR") if parts else FALSE


def _and(parts: Sequence[Fragment]) -> Fragment:
    parts = [p for p in parts if p != TRUE]
    if FALSE in parts:
        return FALSE
    return _join(parts, "AND") if parts else TRUE


def _not(part: Fragment) -> Fragment:
    if part in (TRUE, FALSE):
        return FALSE if part == TRUE else TRUE
    return f"({part[0]}) IS NOT 1", part[1]


def _elem_compare(op: str, operand: Any, value: str, type_: str) -> Fragment:
    """One scalar JSON value (SQL ``value``, JSON type ``type_``) ``<op> operand``."""
    kind = kind_of(operand)
    if kind == "null":
        return (f"{type_} = 'null'", ()) if op in _EQ_LIKE else FALSE
    if kind == "bool":
        names = [n for b, n in _BOOL_TYPES if compare_scalars(b, op, operand)]
        return (f"{type_} IN ({', '.join(names)})", ()) if names else FALSE
    return f"({type_} {_JSON_TYPES[kind]} AND {value} {_SQL_OPS[op]} ?)", (operand,)


def _elem_in(operands: Sequence[Any], value: str, type_: str) -> Fragment:
    """One scalar JSON value equals one of the operands."""
    parts: list[Fragment] = []
    for kind in ("number", "string"):
        same = tuple(x for x in operands if kind_of(x) == kind)
        if same:
            marks = ", ".join("?" * len(same))
            parts.append((f"({type_} {_JSON_TYPES[kind]} AND {value} IN ({marks}))", same))
    names = [n for b, n in _BOOL_TYPES if any(x is b for x in operands)]
    if names:
        parts.append((f"{type_} IN ({', '.join(names)})", ()))
    if any(x is None for x in operands):
        parts.append((f"{type_} = 'null'", ()))
    return _or(parts)


class SqlTranslator:
    """Translates selector nodes and sorts into SQL for one collection."""

    def __init__(self, primary_key: str, field_types: Mapping[str, str]) -> None:
        self.primary_key = primary_key
        self.field_types = field_types

    def field(self, path: str) -> _Field | None:
        """How SQL reads ``path``, or None when the path cannot be inlined."""
        if path == self.primary_key:
            return _Field("id", kind="string")
        jpath = json_path(path)
        if jpath is None:
            return None
        value = f"json_extract(body, '{jpath}')"
        kind = _FIXED_KINDS.get(self.field_types.get(path, ""))
        if kind is not None:
            return _Field(value, jpath, kind=kind)
        return _Field(value, jpath, type=f"json_type(body, '{jpath}')")

    def split(self, node: Node) -> tuple[Fragment, list[Node]]:
        """The top-level conjuncts of ``node`` SQL answers exactly (as one fragment), and
        the conjuncts left to Python."""
        if isinstance(node, And):
            fragments: list[Fragment] = []
            residual: list[Node] = []
            for child in node.children:
                part, rest = self.split(child)
                fragments.append(part)
                residual.extend(rest)
            return _and(fragments), residual
        fragment = self.translate(node)
        return (TRUE, [node]) if fragment is None else (fragment, [])

    def translate(self, node: Node) -> Fragment | None:
        """Exact SQL for ``node``, or None if some part must be evaluated in Python."""
        if isinstance(node, Cond):
            return self._cond(node)
        if isinstance(node, Not):
            inner = self.translate(node.child)
            return None if inner is None else _not(inner)
        parts = [self.translate(child) for child in node.children]
        if any(p is None for p in parts):
            return None
        done = [p for p in parts if p is not None]
        return _and(done) if isinstance(node, And) else _or(done)

    def _cond(self, cond: Cond) -> Fragment | None:
        field = self.field(cond.path)
        op, operand = cond.op, cond.operand
        if field is None:
            return None
        if op in _SQL_OPS:
            return self._compare(field, op, operand) if is_sql_scalar(operand) else None
        if op == "$in":
            return self._in(field, operand) if all(map(is_sql_scalar, operand)) else None
        if op == "$exists":
            test = "IS NOT NULL" if operand else "IS NULL"
            return f"{field.type or field.value} {test}", ()
        if op == "$size":
            if field.kind is not None or not is_sql_scalar(operand):
                return FALSE if field.kind is not None else None
            length = f"json_array_length(body, '{field.jpath}')"
            return f"({field.type} = 'array' AND {length} = ?)", (operand,)
        return None  # $regex, $elemMatch: Python only

    def _compare(self, field: _Field, op: str, operand: Any) -> Fragment:
        if field.kind is not None:
            if operand is None:
                return (f"{field.value} IS NULL", ()) if op in _EQ_LIKE else FALSE
            if kind_of(operand) != field.kind:
                return FALSE
            return f"{field.value} {_SQL_OPS[op]} ?", (operand,)
        missing = operand is None and op in _EQ_LIKE
        return self._any_element(field, lambda v, t: _elem_compare(op, operand, v, t), missing)

    def _in(self, field: _Field, operands: Sequence[Any]) -> Fragment:
        has_null = any(x is None for x in operands)
        if field.kind is not None:
            same = tuple(x for x in operands if kind_of(x) == field.kind)
            parts: list[Fragment] = []
            if same:
                parts.append((f"{field.value} IN ({', '.join('?' * len(same))})", same))
            if has_null:
                parts.append((f"{field.value} IS NULL", ()))
            return _or(parts)
        return self._any_element(field, lambda v, t: _elem_in(operands, v, t), has_null)

    def _any_element(
        self, field: _Field, elem: Callable[[str, str], Fragment], missing: bool
    ) -> Fragment:
        """Mongo's field rule: the value itself matches, or it is an array and one of its
        elements matches (``missing``: a missing field matches too)."""
        parts: list[Fragment] = [(f"{field.type} IS NULL", ())] if missing else []
        own = elem(field.value, field.type)
        if own != FALSE:
            inner, params = elem("je.value", "je.type")
            each = f"json_each(body, '{field.jpath}') AS je"
            exists = f"EXISTS (SELECT 1 FROM {each} WHERE {inner})"
            parts += [own, (f"({field.type} = 'array' AND {exists})", params)]
        return _or(parts)

    def order_by(self, sort: Sequence[tuple[str, bool]]) -> str:
        """ORDER BY terms for ``(path, descending)`` pairs, ending with the ``id``
        tiebreaker in the direction of the last sort field (ascending without a sort), so
        that an index on ``(field, id)`` can serve a descending sort too."""
        terms: list[str] = []
        for path, descending in sort:
            direction = " DESC" if descending else " ASC"
            field = self.field(path)
            if field is None:
                raise QueryError(
                    f'Cannot sort by "{path}": only fields whose path segments use ASCII '
                    "letters, digits, '_' and '-' can be sorted in SQL. Rename the field.",
                    code="QUERY_UNSUPPORTED_PATH",
                    path=path,
                )
            if field.kind is not None:
                terms.append(field.value + direction)
                continue
            rank = (
                f"CASE {field.type} WHEN 'integer' THEN 1 WHEN 'real' THEN 1 WHEN 'text' THEN 2 "
                "WHEN 'object' THEN 3 WHEN 'array' THEN 4 WHEN 'true' THEN 5 WHEN 'false' THEN 5 "
                "ELSE 0 END"
            )
            value = (
                f"CASE WHEN {field.type} IN ('object', 'array') THEN NULL ELSE {field.value} END"
            )
            terms += [rank + direction, value + direction]
        if not sort or sort[-1][0] != self.primary_key:
            terms.append("id DESC" if sort and sort[-1][1] else "id ASC")
        return ", ".join(terms)
