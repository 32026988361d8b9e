"""Conflict handlers: how a fork settles a document that changed on both sides.

A handler has ``is_equal(a, b) -> bool`` (synchronous and cheap: it runs on every replicated
document) and ``resolve(conflict)`` (sync or async) returning the document state to keep.
States are user fields plus ``_deleted`` (no ``_rev``/``_meta``), as on the wire.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

__all__ = [
    "Conflict",
    "ConflictHandler",
    "FunctionConflictHandler",
    "ResolvedConflict",
    "as_conflict_handler",
    "deep_equal",
    "last_write_wins",
    "master_wins",
]

Doc = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Conflict:
    """What the fork wanted to write, what it thought the master held, and what it holds.

    ``assumed_master_state`` is ``None`` when the fork never saw the master's document.
    """

    new_document_state: Doc
    assumed_master_state: Doc | None
    real_master_state: Doc


@runtime_checkable
class ConflictHandler(Protocol):
    """Decides equality of two states and resolves conflicts."""

    def is_equal(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        """True when the two states count as the same document state."""
        ...

    def resolve(self, conflict: Conflict) -> Doc | Awaitable[Doc]:
        """The state to keep (it is written on the fork and pushed to the master)."""
        ...


def deep_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Structural equality of two JSON documents, ignoring ``_rev``, ``_meta`` and
    ``_attachments``, and treating a missing ``_deleted`` as False."""
    if a is b:
        return True
    strip = ("_rev", "_meta", "_attachments")
    left = {k: v for k, v in a.items() if k not in strip}
    right = {k: v for k, v in b.items() if k not in strip}
    left.setdefault("_deleted", False)
    right.setdefault("_deleted", False)
    return left == right and _same_json_types(left, right)


def _same_json_types(a: Any, b: Any) -> bool:
    # Python says True == 1 and 1 == 1.0; JSON documents must keep booleans apart.
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b)
    if isinstance(a, dict):
        return all(_same_json_types(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return all(_same_json_types(x, y) for x, y in zip(a, b, strict=True))
    return True


class FunctionConflictHandler:
    """A handler made of an ``is_equal`` function and a ``resolve`` function."""

    def __init__(
        self,
        resolve: Callable[[Conflict], Doc | Awaitable[Doc]],
        is_equal: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] = deep_equal,
    ) -> None:
        self._resolve = resolve
        self._is_equal = is_equal

    def is_equal(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        """See :class:`ConflictHandler`."""
        return self._is_equal(a, b)

    def resolve(self, conflict: Conflict) -> Doc | Awaitable[Doc]:
        """See :class:`ConflictHandler`."""
        return self._resolve(conflict)


def _master_state(conflict: Conflict) -> Doc:
    return conflict.real_master_state


#: The default: deep equality, and the master's state wins (a long-offline fork does not
#: overwrite what others wrote meanwhile).
master_wins = FunctionConflictHandler(_master_state)


def last_write_wins(timestamp_field: str) -> FunctionConflictHandler:
    """Keep the state with the larger ``timestamp_field``; on a tie, the one whose canonical
    JSON sorts last, so every peer picks the same state.

    Wall clocks differ between devices: a peer whose clock runs ahead wins every conflict
    until the others catch up. Use it where that is acceptable.
    """

    def key(doc: Mapping[str, Any]) -> tuple[float, bytes]:
        stamp = doc.get(timestamp_field)
        number = stamp if isinstance(stamp, int | float) and not isinstance(stamp, bool) else 0
        return (float(number), orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))

    def resolve(conflict: Conflict) -> Doc:
        return max(conflict.new_document_state, conflict.real_master_state, key=key)

    return FunctionConflictHandler(resolve)


def as_conflict_handler(handler: object) -> ConflictHandler:
    """Accept a handler object, a plain ``resolve`` function, or ``None`` (master wins)."""
    if handler is None:
        return master_wins
    if isinstance(handler, ConflictHandler):
        return handler
    if callable(handler):
        return FunctionConflictHandler(handler)
    raise TypeError(
        "conflict_handler must have is_equal() and resolve(), or be a resolve function."
    )


async def resolve_conflict(handler: ConflictHandler, conflict: Conflict) -> Doc:
    """Run ``handler.resolve``, awaiting it when it is async."""
    result = handler.resolve(conflict)
    if inspect.isawaitable(result):
        result = await result
    return dict(result)


class ResolvedConflict:
    """A conflict the handler resolved (in a replication's push): its input and the state
    it chose."""

    __slots__ = ("conflict", "resolved")

    def __init__(self, conflict: Conflict, resolved: dict[str, Any]) -> None:
        self.conflict = conflict
        self.resolved = resolved

    def __repr__(self) -> str:
        return f"<ResolvedConflict {self.resolved!r}>"
