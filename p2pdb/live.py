"""Live queries: re-evaluate a query when a committed write can change its result.

A live query listens to its collection's committed write batches. A batch is relevant when
one of its documents is in the current result, matches the selector now, or matched it
before; large batches are taken as relevant without looking (one re-run is cheaper than
matching thousands of documents). Relevant batches only mark the query dirty: one task per
subscription re-runs it, so a burst of commits costs one re-run, and a write never waits for
a query. A new result is emitted only when it differs (ids, order, revisions) from the last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

import reactivex
from reactivex import Observable
from reactivex.abc import DisposableBase, ObserverBase, SchedulerBase
from reactivex.disposable import Disposable

from .changes import ChangeEvent
from .document import Document

__all__ = ["observe_query", "result_key"]

R = TypeVar("R")
log = logging.getLogger("p2pdb.live")

#: Above this many documents in one commit, re-run the query instead of matching each one.
_MATCH_LIMIT = 32


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
    ) -> None:
        self._run_query = run
        self._batches = batches
        self._matches = matches
        self._observer = observer
        self._dirty = asyncio.Event()
        self._ids: set[str] = set()
        self._key: Hashable = object()
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
        if self._dirty.is_set() or self._relevant(events):
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
            while True:
                self._dirty.clear()
                result = await self._run_query()
                key = result_key(result)
                if key != self._key:
                    self._key = key
                    self._ids = _ids_of(result)
                    self._observer.on_next(result)
                await self._dirty.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database closed, or the query failed
            self.stop()
            self._observer.on_error(exc)


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
) -> Observable[R]:
    """``run()``'s result now, then each time it changes (see the module docstring).

    ``batches`` are the collection's committed batches, ``matches`` the query's selector
    evaluated in Python. Plain callables rather than the query object, so that this module
    stays below ``queries`` (which uses it) in the import graph.
    """

    def subscribe(
        observer: ObserverBase[R], scheduler: SchedulerBase | None = None
    ) -> DisposableBase:
        live = _LiveQuery(run, batches, matches, observer)
        live.start()
        return Disposable(live.stop)

    return reactivex.create(subscribe)
