"""MongoDB-style update operators (RxDB's update plugin, which uses mingo's updater):
``query.update({"$set": {...}, "$inc": {...}})``.

:func:`compile_update` checks an update object once and returns a function from the current
data to the next, which query-level writes then apply like any ``modify`` function. Paths are
dotted names through objects (``"meta.owner"``); array elements are not addressed by index.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ValidationError

__all__ = ["UPDATE_OPERATORS", "compile_update"]

Apply = Callable[[dict[str, Any], str, Any], None]


def _same(a: Any, b: Any) -> bool:
    """JSON equality (``True`` is not ``1``; ``1`` is ``1.0``, as in MongoDB)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return bool(a == b)


def _error(message: str, code: str, **parameters: Any) -> ValidationError:
    return ValidationError(message, code=code, **parameters)


def _parent(doc: dict[str, Any], path: str, create: bool) -> tuple[dict[str, Any] | None, str]:
    """The object holding the last segment of ``path`` (created on the way if ``create``),
    and that segment; ``None`` when it does not exist and is not created."""
    *heads, last = path.split(".")
    node: Any = doc
    for head in heads:
        if not isinstance(node, dict):
            raise _error(
                f"{path!r} goes through a value that is not an object.",
                "UPDATE_BAD_PATH",
                path=path,
            )
        if head not in node:
            if not create:
                return None, last
            node[head] = {}
        node = node[head]
    if not isinstance(node, dict):
        raise _error(
            f"{path!r} goes through a value that is not an object.", "UPDATE_BAD_PATH", path=path
        )
    return node, last


def _number(value: Any, path: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _error(f"{path!r} needs a number, got {value!r}.", "UPDATE_BAD_OPERAND", path=path)
    return value


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    node, key = _parent(doc, path, create=True)
    assert node is not None
    node[key] = copy.deepcopy(value)


def _unset(doc: dict[str, Any], path: str, _value: Any) -> None:
    node, key = _parent(doc, path, create=False)
    if node is not None:
        node.pop(key, None)


def _arithmetic(combine: Callable[[Any, Any], Any], missing: Callable[[Any], Any]) -> Apply:
    def apply(doc: dict[str, Any], path: str, value: Any) -> None:
        operand = _number(value, path)
        node, key = _parent(doc, path, create=True)
        assert node is not None
        node[key] = combine(_number(node[key], path), operand) if key in node else missing(operand)

    return apply


def _compare(keep_new: Callable[[Any, Any], bool]) -> Apply:
    def apply(doc: dict[str, Any], path: str, value: Any) -> None:
        node, key = _parent(doc, path, create=True)
        assert node is not None
        try:
            replace = key not in node or keep_new(value, node[key])
        except TypeError:
            raise _error(
                f"Cannot compare {value!r} with the value at {path!r}.",
                "UPDATE_BAD_OPERAND",
                path=path,
            ) from None
        if replace:
            node[key] = copy.deepcopy(value)

    return apply


def _rename(doc: dict[str, Any], path: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise _error(
            f"$rename of {path!r} needs a new path string.", "UPDATE_BAD_OPERAND", path=path
        )
    node, key = _parent(doc, path, create=False)
    if node is not None and key in node:
        moved = node.pop(key)
        _set(doc, value, moved)


def _array(doc: dict[str, Any], path: str) -> list[Any]:
    node, key = _parent(doc, path, create=True)
    assert node is not None
    current = node.setdefault(key, [])
    if not isinstance(current, list):
        raise _error(f"{path!r} is not an array.", "UPDATE_BAD_OPERAND", path=path)
    return current


def _items(value: Any) -> list[Any]:
    if isinstance(value, Mapping) and set(value) == {"$each"}:
        if not isinstance(value["$each"], list):
            raise _error("$each needs a list.", "UPDATE_BAD_OPERAND")
        return copy.deepcopy(value["$each"])
    return [copy.deepcopy(value)]


def _push(doc: dict[str, Any], path: str, value: Any) -> None:
    _array(doc, path).extend(_items(value))


def _add_to_set(doc: dict[str, Any], path: str, value: Any) -> None:
    array = _array(doc, path)
    for item in _items(value):
        if not any(_same(item, have) for have in array):
            array.append(item)


def _pull(doc: dict[str, Any], path: str, value: Any) -> None:
    node, key = _parent(doc, path, create=False)
    if node is not None and isinstance(node.get(key), list):
        node[key] = [item for item in node[key] if not _same(item, value)]


def _pop(doc: dict[str, Any], path: str, value: Any) -> None:
    if value not in (1, -1) or isinstance(value, bool):
        raise _error(
            f"$pop of {path!r} takes 1 (last) or -1 (first).", "UPDATE_BAD_OPERAND", path=path
        )
    node, key = _parent(doc, path, create=False)
    if node is not None and isinstance(node.get(key), list) and node[key]:
        node[key].pop(-1 if value == 1 else 0)


#: The supported operators, each applied to one path at a time.
UPDATE_OPERATORS: Mapping[str, Apply] = {
    "$set": _set,
    "$unset": _unset,
    "$inc": _arithmetic(lambda a, b: a + b, lambda b: b),
    "$mul": _arithmetic(lambda a, b: a * b, lambda _b: 0),
    "$min": _compare(lambda new, old: new < old),
    "$max": _compare(lambda new, old: new > old),
    "$rename": _rename,
    "$push": _push,
    "$addToSet": _add_to_set,
    "$pull": _pull,
    "$pop": _pop,
}


def compile_update(update: object) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Check an update object (``{"$set": {"a.b": 1}, "$inc": {"n": 1}}``) and return the
    function that applies it to a copy of a document's data. A malformed one raises
    :class:`~p2pdb.errors.ValidationError`: ``UPDATE_UNKNOWN_OPERATOR`` (not one of
    :data:`UPDATE_OPERATORS`), ``UPDATE_BAD_OPERAND`` (an operator's value is not a dict of
    paths), ``UPDATE_BAD_PATH`` (an empty path or segment)."""
    if not isinstance(update, Mapping) or not update:
        raise _error(
            f"An update is a non-empty dict of operators, got {update!r}.", "UPDATE_BAD_OPERAND"
        )
    steps: list[tuple[Apply, str, Any]] = []
    for operator, fields in update.items():
        if operator not in UPDATE_OPERATORS:
            raise _error(
                f"Unknown update operator {operator!r}; supported: {', '.join(UPDATE_OPERATORS)}.",
                "UPDATE_UNKNOWN_OPERATOR",
                operator=operator,
            )
        if not isinstance(fields, Mapping) or not fields:
            raise _error(f"{operator} takes a non-empty dict of paths.", "UPDATE_BAD_OPERAND")
        for path, value in fields.items():
            if not isinstance(path, str) or not all(path.split(".")):
                raise _error(f"{path!r} is not a dotted path.", "UPDATE_BAD_PATH", path=path)
            steps.append((UPDATE_OPERATORS[operator], path, value))

    def apply(data: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(data)
        for step, path, value in steps:
            step(doc, path, value)
        return doc

    return apply
