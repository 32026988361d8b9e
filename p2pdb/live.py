"""Live queries: re-evaluate a query when a committed write can change its result.

A live query listens to its collection's committed write batches. A batch is relevant when
one of its documents is in the current result, matches the selector now, or matched it
before; large batches are taken as relevant without looking (one re-run is cheaper than
matching thousands of documents). Relevant batches only mark the query dirty: one task per
subscription re-runs it, so a burst of commits costs one re-run, and a write never waits for
a query. A new result is emitted only when it differs (ids, order, revisions) from the last.

Batches that only insert new documents can be folded into the current result instead
(``merge``, given by find queries): the inserted documents that match are merged into it in
Python, which is exact for a sorted result starting at the first match (the old result
holds the best ones; nothing outside it can climb above a new one). Matching costs a few
microseconds per document, so it is tried only within the time the last re-run took, and
the query is re-run as soon as the matching would cost more: a query served by an index
keeps being re-run, a full scan with a sort (or a Python-evaluated selector) is merged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar, cast

import reactivex
from reactivex import Observable
from reactivex.abc import DisposableBase, ObserverBase, SchedulerBase
from reactivex.disposable import Disposable

from .changes import ChangeEvent
from .document import Document

__all__ = ["MERGE_SECONDS_PER_DOC", "Merge", "observe_query", "result_key"]

R = TypeVar("R")

#: ``merge(result, added)``: the result once the new documents ``added`` (stored states that
#: match the selector, none of them in ``result``) are written.
Merge = Callable[[R, list[dict[str, Any]]], R]

#: What a pass does instead of merging: re-run the query.
_RERUN: Any = object()
log = logging.getLogger("p2pdb.live")

#: Above this many documents in one commit, re-run the query instead of matching each one
#: in the commit's callback (a merge matches them later, in the query's own task).
_MATCH_LIMIT = 32
#: Documents matched between two looks at the clock while merging.
_CLOCK_EVERY = 64
#: A merge may take this long per inserted document, or as long as the last re-run took,
#: whichever is more (a re-run on a grown collection costs more than the last one did);
#: a slower merge gives up and re-runs the query.
MERGE_SECONDS_PER_DOC = 20e-6
#: Inserted documents held for one merge at most; more wait for a re-run instead.
_MAX_PENDING = 50_000


def result_key(result: object) -> Hashable:
    """What must change for a result to count as changed."""
    if isinstance(result, list):
        return tuple((d.id, d.revision) for d in result)
    if isinstance(result, Document):
        return (result.id, result.revision)
    return result  # int or None


class _LiveQuery(Generic[R]):
    def __init__(
        self,
        run: Callable[[], Awaitable[R]],
        batches: Observable[list[ChangeEvent]],
        matches: Callable[[Mapping[str, Any]], bool],
        observer: ObserverBase[R],
        merge: Merge[R] | None = None,
    ) -> None:
        self._run_query = run
        self._batches = batches
        self._matches = matches
        self._observer = observer
        self._merge = merge
        self._dirty = asyncio.Event()
        self._ids: set[str] = set()
        self._key: Hashable = object()
        # inserted documents not yet merged; None: the next pass re-runs the query
        self._inserted: list[ChangeEvent] | None = None
        self._result: object = _RERUN  # the last result emitted
        self._run_seconds = 0.0  # how long the last re-run took: the budget of a merge
        self._task: asyncio.Task[None] | None = None
        self._subscription: DisposableBase | None = None

    def start(self) -> None:
        self._subscription = self._batches.subscribe(
            on_next=self._on_batch, on_completed=self._on_closed
        )
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.dispose()
            self._subscription = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _on_closed(self) -> None:
        self.stop()
        self._observer.on_completed()

    def _on_batch(self, events: list[ChangeEvent]) -> None:
        if self._dirty.is_set() and self._inserted is None:
            return  # a re-run is due anyway
        if len(events) <= _MATCH_LIMIT and not self._relevant(events):
            return
        if self._merge is None:
            self._inserted = None
        elif not self._dirty.is_set():
            self._inserted = list(events)  # looked at in the query's task, not here
        elif self._inserted is not None:
            self._inserted += events
            if len(self._inserted) > _MAX_PENDING:
                self._inserted = None  # a re-run is cheaper than keeping them all
        self._dirty.set()

    def _relevant(self, events: list[ChangeEvent]) -> bool:
        if len(events) > _MATCH_LIMIT:
            return True
        matches = self._matches
        for event in events:
            if event.id in self._ids:
                return True
            if not event.document["_deleted"] and matches(event.document):
                return True
            previous = event.previous
            if previous is None:
                if event.operation != "INSERT":  # written by another process: unknown before
                    return True
            elif not previous["_deleted"] and matches(previous):
                return True
        return False

    async def _run(self) -> None:
        try:
            first = True
            while True:
                self._dirty.clear()
                inserted, self._inserted = self._inserted, None
                result = _RERUN if first or inserted is None else self._merged(inserted)
                if result is _RERUN:
                    started = time.perf_counter()
                    result = await self._run_query()
                    self._run_seconds = time.perf_counter() - started
                first = False
                key = result_key(result)
                if key != self._key:
                    self._key = key
                    self._ids = _ids_of(result)
                    self._result = result
                    self._observer.on_next(cast(R, result))
                await self._dirty.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database closed, or the query failed
            self.stop()
            self._observer.on_error(exc)

    def _merged(self, inserted: list[ChangeEvent]) -> object:
        """The current result with the matching ``inserted`` documents merged in, or
        ``_RERUN`` when one of them is not a new document (nor a revived one) or when
        matching them costs more than a re-run."""
        result, merge = self._result, self._merge
        if result is _RERUN or merge is None:
            return _RERUN
        budget = max(self._run_seconds, len(inserted) * MERGE_SECONDS_PER_DOC)
        deadline = time.perf_counter() + budget
        matches, ids = self._matches, self._ids
        added: dict[str, dict[str, Any]] = {}
        for n, event in enumerate(inserted):
            if n % _CLOCK_EVERY == 0 and n and time.perf_counter() > deadline:
                return _RERUN
            previous = event.previous
            if event.operation != "INSERT" or (previous is not None and not previous["_deleted"]):
                return _RERUN  # an update or a removal can move or drop a document
            state = event.document
            if event.id in ids:
                # a re-run that started after this commit already holds it: only that very
                # state can be skipped
                if _revision(result, event.id) != state["_rev"]:
                    return _RERUN
                continue
            if event.id in added:
                return _RERUN  # written twice since: not a plain insert any more
            if matches(state):
                added[event.id] = state
        return merge(cast(R, result), list(added.values())) if added else result


def _revision(result: object, doc_id: str) -> str | None:
    docs = result if isinstance(result, list) else [result]
    for doc in docs:
        if isinstance(doc, Document) and doc.id == doc_id:
            return doc.revision
    return None


def _ids_of(result: object) -> set[str]:
    if isinstance(result, list):
        return {d.id for d in result}
    if isinstance(result, Document):
        return {result.id}
    return set()


def observe_query(
    run: Callable[[], Awaitable[R]],
    batches: Observable[list[ChangeEvent]],
    matches: Callable[[Mapping[str, Any]], bool],
    merge: Merge[R] | None = None,
) -> Observable[R]:
    """``run()``'s result now, then each time it changes (see the module docstring).

    ``batches`` are the collection's committed batches, ``matches`` the query's selector
    evaluated in Python, ``merge`` (optional) folds newly inserted matching documents into
    a result exactly as a re-run would. Plain callables rather than the query object, so
    that this module stays below ``queries`` (which uses it) in the import graph.
    """

    def subscribe(
        observer: ObserverBase[R], scheduler: SchedulerBase | None = None
    ) -> DisposableBase:
        live = _LiveQuery(run, batches, matches, observer, merge)
        live.start()
        return Disposable(live.stop)

    return reactivex.create(subscribe)
