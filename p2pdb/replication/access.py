"""Which documents a replication lets through: one filter seam for access rules and partial
replication.

The serving side (``collection_handler(collection, access=DocumentAccess(...))``) answers a
remote only with the documents it may read, and writes only what it may write: per-peer
authorization (``can_read``/``can_write``), plus an optional Mango ``selector`` and the
modifiers of documents leaving (``outgoing``) and entering (``incoming``) the served
collection. The fork side (``ReplicationOptions(selector=..., pull_modifier=...,
push_modifier=...)``) filters and transforms with the same helpers (:class:`DocumentFilter`,
:func:`apply_modifier`). Every hook may be a plain function or a coroutine function.

All documents given to the hooks are in wire form (user fields plus ``_deleted``), so a
tombstone is judged like any state of its document. See docs/replication.md, "Partial
replication and access rules".
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from ..errors import P2PDBError, ReplicationError
from ..query import CompiledQuery, compile_query
from ..schema import Schema
from .protocol import WriteRow

__all__ = [
    "PENDING",
    "AccessCheck",
    "DocumentAccess",
    "DocumentFilter",
    "Modifier",
    "ReadRule",
    "WriteRule",
    "apply_modifier",
    "outgoing_rows",
    "refused_ids",
    "resolve",
]

Doc = dict[str, Any]
T = TypeVar("T")

#: ``can_read(state)``: may the remote see this stored state (wire form)?
ReadRule = Callable[[Mapping[str, Any]], bool | Awaitable[bool]]
#: ``can_write(current, new)``: may the remote replace ``current`` (the master's stored state
#: in wire form, ``None`` if the document does not exist) with ``new`` (wire form, as it would
#: be stored)?
WriteRule = Callable[[Mapping[str, Any] | None, Mapping[str, Any]], bool | Awaitable[bool]]
#: A document on its way in or out (wire form) -> the document to use, or ``None`` to drop it.
Modifier = Callable[[Doc], Doc | None | Awaitable[Doc | None]]


class _Pending:
    """The type of :data:`PENDING`."""

    def __repr__(self) -> str:
        return "PENDING"


#: Returned by :meth:`AccessCheck.view_now` when a hook answered with an awaitable.
PENDING: Final = _Pending()


@dataclass(frozen=True, slots=True)
class DocumentAccess:
    """What one remote may read and write through a ``collection_handler``.

    Every field is optional; ``DocumentAccess()`` lets everything through. A document is
    sent only when ``can_read`` allows its stored state and it matches ``selector``; a
    document the remote may not read is never sent, not even as a tombstone, and never
    returned as a conflict. A pushed row is written only when ``can_write(current, new)``
    allows it and ``new`` or ``current`` matches ``selector``; otherwise the whole push is
    answered with ``ReplicationError`` ``REPLICATION_WRITE_REFUSED`` and none of its rows is
    written.
    """

    #: ``can_read(state) -> bool``: may the remote see this stored state (wire form)?
    can_read: ReadRule | None = None
    #: ``can_write(current, new) -> bool``: may the remote replace the stored state
    #: ``current`` (``None``: the document does not exist) with ``new``?
    can_write: WriteRule | None = None
    #: A Mango selector (the collection's query language): only matching documents are
    #: sent, and pushed rows must match it (their new state or the state they replace).
    selector: Mapping[str, Any] | None = None
    #: Transforms each document sent to the remote (``None``: do not send it). Pushed
    #: rows' assumed states are compared with this view of the stored state.
    outgoing: Modifier | None = None
    #: Transforms each document the remote pushes, before validation (``None``: ignore it).
    incoming: Modifier | None = None


async def resolve(value: T | Awaitable[T]) -> T:
    """``value``, awaited if it is awaitable (hooks may be plain or async functions)."""
    if inspect.isawaitable(value):
        return await value
    return value


async def outgoing_rows(
    modifier: Modifier | None, rows: list[WriteRow], pk: str, unsent: set[str]
) -> tuple[list[WriteRow], list[WriteRow]]:
    """The rows a fork sends, as it holds them and as ``modifier`` (its ``push_modifier``)
    makes them (RxDB's rule: the modifier applies to both states; ``None`` leaves a row
    unsent, its id added to ``unsent``)."""
    if modifier is None:
        return rows, rows
    kept: list[WriteRow] = []
    wire: list[WriteRow] = []
    for row in rows:
        new = await apply_modifier(modifier, row.new_document_state)
        if new is None:
            unsent.add(row.new_document_state[pk])
            continue
        assumed = row.assumed_master_state
        if assumed is not None:
            assumed = await apply_modifier(modifier, assumed)
        kept.append(row)
        wire.append(WriteRow(new, assumed))
    return kept, wire


async def apply_modifier(modifier: Modifier | None, doc: Doc) -> Doc | None:
    """``modifier(doc)`` (awaited if needed) on a copy of ``doc``; ``doc`` without one."""
    if modifier is None:
        return doc
    result = await resolve(modifier(dict(doc)))
    return None if result is None else dict(result)


class DocumentFilter:
    """A Mango ``selector`` compiled for one collection (``None`` matches everything).

    Raises :class:`~p2pdb.errors.QueryError` for a malformed selector.
    """

    def __init__(self, selector: Mapping[str, Any] | None, schema: Schema) -> None:
        self.selector = None if selector is None else dict(selector)
        self._query: CompiledQuery | None = (
            None
            if selector is None
            else compile_query(
                selector, primary_key=schema.primary_key, field_types=schema.field_types
            )
        )

    @property
    def everything(self) -> bool:
        """True when there is no selector."""
        return self._query is None

    def matches(self, doc: Mapping[str, Any]) -> bool:
        """Whether ``doc`` (wire form) matches the selector."""
        return self._query is None or self._query.matches(doc)


def _discard(value: object) -> None:
    """Close a coroutine we will not await (no "never awaited" warning)."""
    close = getattr(value, "close", None)
    if inspect.iscoroutine(value) and close is not None:
        close()


def _hook_failed(name: str, exc: Exception) -> ReplicationError:
    error = ReplicationError(
        f"The access hook {name} raised {exc!r}; the request was refused. Fix the hook.",
        code="REPLICATION_ACCESS_HOOK",
        hook=name,
    )
    error.__cause__ = exc
    return error


class AccessCheck:
    """A :class:`DocumentAccess` bound to the collection it guards (the master side).

    A hook that raises fails the request with ``ReplicationError``
    ``REPLICATION_ACCESS_HOOK`` (its ``__cause__`` is the hook's exception), answered to the
    remote as an error: nothing is sent or written on a failing rule.
    """

    def __init__(self, access: DocumentAccess, schema: Schema) -> None:
        self.access = access
        self.filter = DocumentFilter(access.selector, schema)

    async def view(self, stored: Doc) -> Doc | None:
        """What the remote gets of the stored state ``stored`` (wire form): the outgoing
        form, or ``None`` when it may not read it."""
        if not self.filter.matches(stored):
            return None
        rule = self.access.can_read
        try:
            if rule is not None and not await resolve(rule(stored)):
                return None
        except P2PDBError:
            raise
        except Exception as exc:
            raise _hook_failed("can_read", exc) from exc
        try:
            return await apply_modifier(self.access.outgoing, stored)
        except P2PDBError:
            raise
        except Exception as exc:
            raise _hook_failed("outgoing", exc) from exc

    def view_now(self, stored: Doc) -> Doc | None | _Pending:
        """:meth:`view` without awaiting: :data:`PENDING` if a hook returned an awaitable
        or raised (the caller then falls back to something it can await, e.g. a RESYNC
        whose pull reports the failure)."""
        try:
            return self._view_now(stored)
        except Exception:
            return PENDING

    def _view_now(self, stored: Doc) -> Doc | None | _Pending:
        if not self.filter.matches(stored):
            return None
        rule = self.access.can_read
        if rule is not None:
            allowed = rule(stored)
            if inspect.isawaitable(allowed):
                _discard(allowed)
                return PENDING
            if not allowed:
                return None
        if self.access.outgoing is None:
            return stored
        result = self.access.outgoing(dict(stored))
        if inspect.isawaitable(result):
            _discard(result)
            return PENDING
        return None if result is None else dict(result)

    async def incoming(self, pushed: Doc) -> Doc | None:
        """A pushed document as it would be stored (``None``: the modifier dropped it)."""
        try:
            return await apply_modifier(self.access.incoming, pushed)
        except P2PDBError:
            raise
        except Exception as exc:
            raise _hook_failed("incoming", exc) from exc

    async def may_write(self, current: Doc | None, new: Doc) -> bool:
        """Whether the remote may replace ``current`` (``None``: absent) with ``new``."""
        in_scope = self.filter.matches(new) or (
            current is not None and self.filter.matches(current)
        )
        if not in_scope:
            return False
        rule = self.access.can_write
        try:
            return rule is None or bool(await resolve(rule(current, new)))
        except P2PDBError:
            raise
        except Exception as exc:
            raise _hook_failed("can_write", exc) from exc


def refused_ids(error: P2PDBError) -> set[str]:
    """The ids a master's ``REPLICATION_WRITE_REFUSED`` names, directly or as the remote
    error of a transport (empty for any other error)."""
    found = error.parameters.get("remote_error")
    details = found if isinstance(found, dict) else {"code": error.code, **error.parameters}
    if details.get("code") != "REPLICATION_WRITE_REFUSED":
        return set()
    ids = details.get("ids")
    return {i for i in ids if isinstance(i, str)} if isinstance(ids, list) else set()
