"""Event streams: hot observables that survive failing subscribers, and bounded async iterators.

``EventStream`` is a reactivex ``Subject`` whose ``on_next`` delivers to every observer even
when one raises: the error is logged and the others still get the value, so a failing
subscriber never breaks a write or its neighbours. (Inside a ``.pipe(...)`` chain reactivex
itself detaches an observer that raised; direct subscribers stay subscribed.)

``iterate`` turns an observable into an ``async for`` iterator with a bounded buffer: a
consumer that falls more than ``max_buffer`` items behind gets :class:`StreamOverflowError`
instead of making memory grow without bound. ``coalesce=True`` keeps only the newest item
instead (right for query results, where only the latest matters).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

from reactivex import Observable
from reactivex.abc import DisposableBase
from reactivex.subject import Subject

from .changes import ChangeEvent
from .errors import StreamOverflowError

__all__ = ["CommitStreams", "EventStream", "HeldEventStream", "StreamOverflowError", "iterate"]

T = TypeVar("T")
log = logging.getLogger("p2pdb.streams")

_DONE = object()


class EventStream(Subject[T], Generic[T]):
    """A hot stream of events (see the module docstring)."""

    def _on_next_core(self, value: T) -> None:
        for observer in list(self.observers):
            try:
                observer.on_next(value)
            except Exception:
                log.exception("A subscriber of a p2pdb stream raised; it was skipped")


class HeldEventStream(EventStream[T]):
    """An :class:`EventStream` that holds what is emitted before its first subscriber (the
    last ``limit`` items) and gives it to that subscriber: errors a pool reports while
    ``replicate_webrtc()`` is still joining reach the caller who subscribes right after."""

    def __init__(self, limit: int = 64) -> None:
        super().__init__()
        self._held: deque[T] | None = deque(maxlen=limit)

    def _on_next_core(self, value: T) -> None:
        if self._held is not None:
            self._held.append(value)
        else:
            super()._on_next_core(value)

    def _subscribe_core(self, observer: Any, scheduler: Any = None) -> DisposableBase:
        subscription = super()._subscribe_core(observer, scheduler)
        held, self._held = self._held, None
        for value in held or ():
            super()._on_next_core(value)
        return subscription


class CommitStreams:
    """The two streams of one collection's committed writes: one list per transaction
    (``batches``) and one event per document (``changes``).

    The database owns one per collection and feeds it (:meth:`emit`, then :meth:`complete`
    when it closes); the collection only exposes the two observables, so nothing but the
    commit path can publish on them.
    """

    def __init__(self) -> None:
        self._batches: EventStream[list[ChangeEvent]] = EventStream()
        self._changes: EventStream[ChangeEvent] = EventStream()

    @property
    def batches(self) -> Observable[list[ChangeEvent]]:
        """Every committed transaction's events, as one list, in commit order."""
        return self._batches

    @property
    def changes(self) -> Observable[ChangeEvent]:
        """Every committed event, one per document, in commit order."""
        return self._changes

    def emit(self, events: list[ChangeEvent]) -> None:
        """Publish one committed transaction's events (called on the loop, in commit order)."""
        self._batches.on_next(events)
        if self._changes.observers:  # a 10,000-document commit with no listener costs nothing
            for event in events:
                self._changes.on_next(event)

    def complete(self) -> None:
        """End both streams (the database closed)."""
        self._batches.on_completed()
        self._changes.on_completed()


class _Iterator(Generic[T]):
    def __init__(self, source: Observable[T], max_buffer: int, coalesce: bool) -> None:
        self._items: deque[Any] = deque()
        self._max = max_buffer
        self._coalesce = coalesce
        self._wakeup = asyncio.Event()
        self._error: BaseException | None = None
        self._subscription: DisposableBase | None = source.subscribe(
            on_next=self._push,
            on_error=self._fail,
            on_completed=lambda: self._push_raw(_DONE),
        )

    def _push(self, item: T) -> None:
        if self._coalesce:
            self._items.clear()
        elif len(self._items) >= self._max:
            self._fail(
                StreamOverflowError(
                    f"This async iterator fell {self._max} events behind its stream and was "
                    "stopped. Consume faster, raise max_buffer, or subscribe with a callback.",
                    max_buffer=self._max,
                )
            )
            return
        self._push_raw(item)

    def _push_raw(self, item: object) -> None:
        self._items.append(item)
        self._wakeup.set()

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._stop()
        self._wakeup.set()

    def _stop(self) -> None:
        if self._subscription is not None:
            self._subscription.dispose()
            self._subscription = None

    def __aiter__(self) -> _Iterator[T]:
        return self

    async def aclose(self) -> None:
        """Stop listening to the stream."""
        self._stop()

    def __del__(self) -> None:
        self._stop()

    async def __anext__(self) -> T:
        while True:
            if self._error is not None:
                raise self._error
            if self._items:
                item = self._items.popleft()
                if item is _DONE:
                    self._stop()
                    raise StopAsyncIteration
                return item  # type: ignore[no-any-return]
            self._wakeup.clear()
            await self._wakeup.wait()


def iterate(
    source: Observable[T], *, max_buffer: int = 10_000, coalesce: bool = False
) -> AsyncIterator[T]:
    """``async for item in iterate(observable)``; see the module docstring for the policy.

    Leaving the loop (``break``) or ``await iterator.aclose()`` unsubscribes.
    """
    return _Iterator(source, max_buffer, coalesce)
