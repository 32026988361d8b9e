"""Mango selectors and sorts, compiled to SQLite SQL and to a Python evaluator.

    q = compile_query({"n": {"$gt": 5}}, [{"n": "desc"}], primary_key="id",
                      field_types={"n": "integer"})
    sql = f"SELECT body FROM t WHERE deleted = 0 AND ({q.where_sql}) ORDER BY {q.order_sql}"
    docs = [orjson.loads(body) for (body,) in conn.execute(sql, q.where_params)]
    if q.residual is not None:  # parts SQL cannot answer exactly: skip/limit after this
        docs = [d for d in docs if q.residual(d)]

Semantics follow MongoDB (as RxDB does), with these precise choices:

* Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $regex $options $not $elemMatch
  $size`` on fields, ``$and $or $nor`` on selectors; ``{"a": 1}`` is ``$eq``; several keys,
  or several operators on one field, are all required.
* Dotted paths walk nested objects only: ``a.b`` is missing when ``a`` is not an object
  (arrays are not traversed and ``a.0`` is the key ``"0"``, not an index).
* Array fields: ``$eq $in $gt $gte $lt $lte $regex`` match when the whole value matches or
  when it is an array and one element matches (``{"tags": "x"}`` finds ``["x", "y"]``).
  Several operators on one field may be met by different elements; use ``$elemMatch`` to
  require one element to meet them all. ``$ne`` and ``$nin`` are the negations.
* Type bracketing: comparisons only hold between values of one type (numbers, strings,
  booleans); booleans are not numbers; ints and floats compare numerically; strings by code
  point. ``$eq: null`` matches null, missing, or an array holding null; ``$ne: null`` the
  rest; ``$gte``/``$lte: null`` are ``$eq: null``; ``$gt``/``$lt: null`` match nothing.
  Equality with objects and arrays is deep (object key order does not matter).
* ``$regex`` uses Python's :mod:`re` (``re.search``); ``$options`` letters ``imsx``.
* Sort: missing/null < numbers < strings < objects < arrays < booleans, natural order within
  numbers, strings and booleans; objects tie with objects, arrays with arrays. Ties are
  broken by the primary key, in the direction of the last sort field.
* Strings must not contain U+0000 (SQLite's JSON functions cut them there) and integers must
  fit in signed 64 bits; ``Collection.prepare`` refuses such documents (``p2pdb.values``).

``field_types`` is a promise that every present value of a path has that JSON type; the SQL
then reads values directly so that expression indexes serve filters and sorts.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ._query_eval import Descending, evaluator, get_path, sort_value
from ._query_sql import (
    And,
    Cond,
    ElemMatch,
    Node,
    Not,
    Or,
    SqlTranslator,
    json_path,
    kind_of,
)
from .errors import QueryError
from .values import MAX_DEPTH, brief, is_text, nested_deeper

__all__ = ["QUERY_ERROR_CODES", "CompiledQuery", "compile_query", "path_expression"]

QUERY_ERROR_CODES: Final[tuple[str, ...]] = (
    "QUERY_ENCRYPTED_FIELD",
    "QUERY_INVALID_OPERAND",
    "QUERY_INVALID_PATH",
    "QUERY_INVALID_REGEX",
    "QUERY_INVALID_SELECTOR",
    "QUERY_INVALID_SORT",
    "QUERY_INVALID_SORT_DIRECTION",
    "QUERY_MIXED_OPERATORS",
    "QUERY_OPERATOR_WRONG_LEVEL",
    "QUERY_UNKNOWN_OPERATOR",
    "QUERY_UNSUPPORTED_PATH",
)
"""Every ``QueryError.code`` raised by this module."""

_COMPARISONS: Final = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
_FIELD_OPERATORS: Final = frozenset(
    {*_COMPARISONS, "$in", "$nin", "$exists", "$regex", "$options", "$not", "$elemMatch", "$size"}
)
_LOGICAL_OPERATORS: Final = frozenset({"$and", "$or", "$nor"})
_REGEX_FLAGS: Final = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


def path_expression(path: str, *, primary_key: str) -> str:
    """The SQL expression that reads ``path`` from a document row.

    ``"n"`` gives ``json_extract(body, '$.n')``, ``"a.b"`` gives
    ``json_extract(body, '$.a.b')`` and the primary key gives ``id``. Queries on a field use
    exactly this text, so an expression index built from it serves them. Raises
    :class:`QueryError` (``QUERY_UNSUPPORTED_PATH``) unless every dot-separated segment is
    made of ASCII letters, digits, ``_`` and ``-``.
    """
    if path == primary_key:
        return "id"
    jpath = json_path(path)
    if jpath is None:
        raise QueryError(
            f'The field path "{path}" cannot be indexed or sorted: each dot-separated segment '
            "must be ASCII letters, digits, '_' or '-'. Rename the field.",
            code="QUERY_UNSUPPORTED_PATH",
            path=path,
        )
    return f"json_extract(body, '{jpath}')"


@dataclass(frozen=True)
class CompiledQuery:
    """A selector and sort compiled for one collection.

    ``where_sql`` (with ``where_params``) selects a superset of the matches, exactly the
    matches when ``residual`` is None; otherwise keep only rows for which ``residual(doc)``
    is true (and apply skip/limit after that). ``order_sql`` is an ORDER BY body ending with
    the ``id`` tiebreaker. ``paths`` lists every field path the selector or sort names.
    """

    where_sql: str
    where_params: tuple[Any, ...]
    residual: Callable[[Mapping[str, Any]], bool] | None
    order_sql: str
    paths: frozenset[str]
    _predicate: Callable[[Any], bool] = field(repr=False, compare=False)
    _sort: tuple[tuple[str, bool], ...] = field(repr=False)

    def matches(self, doc: Mapping[str, Any]) -> bool:
        """Whether ``doc`` matches the whole selector (evaluated in Python)."""
        return self._predicate(doc)

    def sort_key(self, doc: Mapping[str, Any]) -> tuple[Any, ...]:
        """A key for :func:`sorted` giving the same order as ``order_sql``."""
        return tuple(
            Descending(sort_value(get_path(doc, p))) if desc else sort_value(get_path(doc, p))
            for p, desc in self._sort
        )


def compile_query(
    selector: Mapping[str, Any] | None,
    sort: Sequence[Mapping[str, str]] | None = None,
    *,
    primary_key: str,
    field_types: Mapping[str, str] = {},  # noqa: B006 (read only)
    forbidden_paths: Collection[str] = (),
) -> CompiledQuery:
    """Compile a Mango ``selector`` and ``sort`` (``[{"field": "asc" | "desc"}, ...]``).

    ``field_types`` maps paths to their single declared JSON Schema type; ``forbidden_paths``
    are encrypted fields, which cannot be queried or sorted. Raises :class:`QueryError` for
    a malformed selector or sort (``QUERY_ERROR_CODES`` lists the codes).
    """
    if nested_deeper(selector, MAX_DEPTH):  # parsing and evaluating recurse
        raise _too_deep()
    try:
        parser = _Parser(tuple(forbidden_paths))
        root = parser.selector({} if selector is None else selector, "")
        order = parser.sort(sort)
        translator = SqlTranslator(primary_key, field_types)
        (where_sql, where_params), rest = translator.split(root)
    except RecursionError:  # below the depth cap, but the caller's stack was already deep
        raise _too_deep() from None
    residual = None
    if rest:
        residual = evaluator(rest[0] if len(rest) == 1 else And(tuple(rest)))
    order_sql = translator.order_by(order)
    if not order or order[-1][0] != primary_key:
        order.append((primary_key, bool(order) and order[-1][1]))
    return CompiledQuery(
        where_sql=where_sql,
        where_params=where_params,
        residual=residual,
        order_sql=order_sql,
        paths=frozenset(parser.paths),
        _predicate=evaluator(root),
        _sort=tuple(order),
    )


# ---------------------------------------------------------------------------- parsing

def _too_deep() -> QueryError:
    return _error(
        "QUERY_INVALID_SELECTOR",
        f"The selector is nested more than {MAX_DEPTH} levels deep; no stored "
        "document is that deep. Flatten the selector.",
    )


def _error(code: str, message: str, **parameters: Any) -> QueryError:
    return QueryError(message, code=code, **parameters)


class _Parser:
    """Validates a selector and sort and builds the node tree."""

    def __init__(self, forbidden: tuple[str, ...]) -> None:
        self.forbidden = forbidden
        self.paths: set[str] = set()

    def selector(self, selector: Any, prefix: str) -> Node:
        if not isinstance(selector, Mapping):
            raise _error(
                "QUERY_INVALID_SELECTOR",
                f"A selector must be an object like {{\"field\": value}}, got {brief(selector)}.",
            )
        nodes: list[Node] = []
        for key, value in selector.items():
            if isinstance(key, str) and key in _LOGICAL_OPERATORS:
                nodes.append(self._logical(key, value, prefix))
            elif isinstance(key, str) and key.startswith("$"):
                if key in _FIELD_OPERATORS:
                    raise _error(
                        "QUERY_OPERATOR_WRONG_LEVEL",
                        f'"{key}" applies to a field: write {{"field": {{"{key}": ...}}}}.',
                        operator=key,
                    )
                raise _unknown(key)
            else:
                path = self._path(key, prefix)
                full = f"{prefix}.{path}" if prefix else path
                nodes.extend(self._field(path, value, full))
        return nodes[0] if len(nodes) == 1 else And(tuple(nodes))

    def _logical(self, op: str, operand: Any, prefix: str) -> Node:
        if not isinstance(operand, list | tuple) or not operand:
            raise _error(
                "QUERY_INVALID_OPERAND",
                f'"{op}" takes a non-empty list of selectors, like '
                f'{{"{op}": [{{"a": 1}}, {{"b": 2}}]}}; got {brief(operand)}.',
                operator=op,
            )
        children = tuple(self.selector(s, prefix) for s in operand)
        if op == "$and":
            return And(children)
        return Or(children) if op == "$or" else Not(Or(children))

    def _path(self, key: Any, prefix: str) -> str:
        segments = key.split(".") if isinstance(key, str) else [""]
        if not all(segments) or any(s.startswith("$") for s in segments):
            raise _error(
                "QUERY_INVALID_PATH",
                f"Invalid field path {brief(key)}: use dot-separated field names that are "
                "non-empty and do not start with '$'.",
                path=key,
            )
        full = f"{prefix}.{key}" if prefix else key
        for f in self.forbidden:
            if full == f or full.startswith(f + ".") or f.startswith(full + "."):
                raise _error(
                    "QUERY_ENCRYPTED_FIELD",
                    f'The field "{f}" is encrypted and cannot be queried or sorted; '
                    "filter on other fields, or in Python after loading the documents.",
                    path=full,
                )
        if not prefix:
            self.paths.add(full)
        return str(key)

    def _field(self, path: str, condition: Any, full: str) -> list[Node]:
        """Nodes for ``{path: condition}``; ``full`` is the path from the document root."""
        if isinstance(condition, Mapping) and any(
            isinstance(k, str) and k.startswith("$") for k in condition
        ):
            if not all(isinstance(k, str) and k.startswith("$") for k in condition):
                raise _error(
                    "QUERY_MIXED_OPERATORS",
                    f'The condition on "{full}" mixes operators and field names: use either '
                    '{"$gt": 1, ...} or a plain object to match, or dotted paths for '
                    "nested fields.",
                    path=full,
                )
            return self._operators(path, condition, full)
        return [Cond(path, "$eq", _json(condition, "$eq", full))]

    def _operators(self, path: str, ops: Mapping[str, Any], where: str) -> list[Node]:
        """Nodes for an operator object on ``path``; ``where`` is its path from the root."""
        nodes: list[Node] = []
        for op, operand in ops.items():
            if op in ("$eq", "$ne"):
                node: Node = Cond(path, "$eq", _json(operand, op, where))
                nodes.append(node if op == "$eq" else Not(node))
            elif op in _COMPARISONS:
                if kind_of(operand) not in ("null", "bool", "number", "string"):
                    raise _operand_error(op, where, "a number, string, boolean or null", operand)
                nodes.append(Cond(path, op, _json(operand, op, where)))
            elif op in ("$in", "$nin"):
                if not isinstance(operand, list | tuple):
                    raise _operand_error(op, where, "a list of values", operand)
                node = Cond(path, "$in", tuple(_json(x, op, where) for x in operand))
                nodes.append(node if op == "$in" else Not(node))
            elif op == "$exists":
                if not isinstance(operand, bool):
                    raise _operand_error(op, where, "true or false", operand)
                nodes.append(Cond(path, op, operand))
            elif op == "$size":
                if type(operand) is not int or operand < 0:
                    raise _operand_error(op, where, "an integer >= 0", operand)
                nodes.append(Cond(path, op, operand))
            elif op == "$regex":
                nodes.append(Cond(path, op, _regex(operand, ops.get("$options", ""), where)))
            elif op == "$options":
                if "$regex" not in ops:
                    raise _error(
                        "QUERY_INVALID_REGEX",
                        f'"$options" on "{where}" needs a "$regex" next to it.',
                        path=where,
                    )
            elif op == "$not":
                if not isinstance(operand, Mapping) or not operand or not all(
                    isinstance(k, str) and k.startswith("$") for k in operand
                ):
                    raise _operand_error(op, where, 'an operator object like {"$gt": 5}', operand)
                nodes.append(Not(_all(self._operators(path, operand, where))))
            elif op == "$elemMatch":
                nodes.append(Cond(path, op, self._elem_match(operand, where)))
            elif op in _LOGICAL_OPERATORS:
                raise _error(
                    "QUERY_OPERATOR_WRONG_LEVEL",
                    f'"{op}" combines selectors and cannot be used inside the condition on '
                    f'"{where}": write {{"{op}": [{{"{where}": ...}}, ...]}} at selector level.',
                    operator=op,
                    path=where,
                )
            else:
                raise _unknown(op, where)
        return nodes

    def _elem_match(self, operand: Any, where: str) -> ElemMatch:
        if not isinstance(operand, Mapping) or not operand:
            raise _operand_error("$elemMatch", where, "a non-empty object", operand)
        value_mode = all(
            isinstance(k, str) and k.startswith("$") and k not in _LOGICAL_OPERATORS
            for k in operand
        )
        if value_mode:
            return ElemMatch(_all(self._operators("", operand, where)), objects_only=False)
        return ElemMatch(self.selector(operand, where), objects_only=True)

    def sort(self, sort: Sequence[Mapping[str, str]] | None) -> list[tuple[str, bool]]:
        if sort is None:
            return []
        if isinstance(sort, str | Mapping) or not isinstance(sort, Sequence):
            raise _error(
                "QUERY_INVALID_SORT",
                f'A sort must be a list like [{{"field": "asc"}}, {{"other": "desc"}}], '
                f"got {brief(sort)}.",
            )
        order: list[tuple[str, bool]] = []
        for entry in sort:
            if not isinstance(entry, Mapping) or len(entry) != 1:
                raise _error(
                    "QUERY_INVALID_SORT",
                    f'Each sort entry must be an object with one field, like {{"field": '
                    f'"asc"}}; got {brief(entry)}. Use several entries to sort by several fields.',
                )
            ((key, direction),) = entry.items()
            path = self._path(key, "")
            if direction not in ("asc", "desc"):
                raise _error(
                    "QUERY_INVALID_SORT_DIRECTION",
                    f'Sort direction for "{path}" must be "asc" or "desc", got {brief(direction)}.',
                    path=path,
                )
            order.append((path, direction == "desc"))
        return order


def _all(nodes: list[Node]) -> Node:
    return nodes[0] if len(nodes) == 1 else And(tuple(nodes))


def _unknown(op: str, path: str | None = None) -> QueryError:
    known = ", ".join(sorted(_FIELD_OPERATORS | _LOGICAL_OPERATORS))
    where = f' on "{path}"' if path else ""
    return _error(
        "QUERY_UNKNOWN_OPERATOR",
        f'Unknown query operator "{op}"{where}. Known operators: {known}. '
        "Field names cannot start with '$'.",
        operator=op,
    )


def _operand_error(op: str, path: str, expected: str, operand: Any) -> QueryError:
    return _error(
        "QUERY_INVALID_OPERAND",
        f'"{op}" on "{path}" takes {expected}, got {brief(operand)}.',
        operator=op,
        path=path,
    )


def _json(value: Any, op: str, path: str) -> Any:
    """``value`` as plain JSON (lists and dicts), or a QUERY_INVALID_OPERAND error.

    Strings (and keys) must be encodable text: a lone surrogate could never be stored, and
    SQLite cannot even bind it (it raised UnicodeEncodeError when the query ran)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str) and is_text(str(value)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, list | tuple):
        return [_json(x, op, path) for x in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) and is_text(str(k)) for k in value):
        return {k: _json(v, op, path) for k, v in value.items()}
    raise _operand_error(
        op, path, "JSON values (no NaN, infinity, lone surrogate or non-JSON types)", value
    )


def _regex(pattern: Any, options: Any, path: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise _error(
            "QUERY_INVALID_REGEX", f'"$regex" on "{path}" takes a string pattern.', path=path
        )
    if not isinstance(options, str) or not set(options) <= set(_REGEX_FLAGS):
        raise _error(
            "QUERY_INVALID_REGEX",
            f'"$options" on "{path}" must be a string of the letters i, m, s, x; '
            f"got {brief(options)}.",
            path=path,
        )
    flags = functools.reduce(lambda a, c: a | _REGEX_FLAGS[c], options, 0)
    try:
        return re.compile(pattern, flags)
    except re.error as e:
        raise _error(
            "QUERY_INVALID_REGEX",
            f'"$regex" on "{path}" is not a valid regular expression ({e}): {brief(pattern)}.',
            path=path,
        ) from None
