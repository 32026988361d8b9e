"""Starting a coroutine at once instead of on the next turn of the event loop.

``loop.create_task(coro)`` runs nothing of ``coro`` until the loop's next turn, behind
every callback already ready: on a busy replication peer, 20-50 us per hop, and a single
write's path from one database to another had four of them. :func:`start_eagerly` runs
``coro`` right away, in the caller's turn, up to its first real suspension (a write sent
to the writer thread, a full channel buffer); a coroutine that never suspends (a small
write run on the event loop, a frame the channel takes at once) is done before the call
returns. What is left after a suspension runs as an ordinary task.

It is Python 3.12's eager task start (``asyncio.Task(..., eager_start=True)``), which it
uses where it exists. On Python 3.11 it does the same by hand: the task is made first, and
is the current task (``asyncio.current_task()``, which ``asyncio.timeout`` relies on) while
the first part runs in the caller's turn; its first scheduled step then goes on from where
that part stopped. Either way the coroutine runs in a copy of the caller's context, as a
task would: a context variable it sets stays its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["start_eagerly"]

T = TypeVar("T")

_NATIVE = sys.version_info >= (3, 12)
# asyncio's own bookkeeping of the current task (what Python 3.12's eager start swaps)
_enter_task = asyncio.tasks._enter_task
_leave_task = asyncio.tasks._leave_task


def start_eagerly(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coro`` now up to its first suspension; the rest, if any, runs as a task.

    Returns a future of its outcome (already done if it never suspended), which can be
    awaited, cancelled and shielded like a task's.
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    if _NATIVE:
        return asyncio.Task(coro, loop=loop, context=context, eager_start=True)  # type: ignore[call-arg]
    started = _Started(coro)
    task = loop.create_task(started, context=context)
    caller = asyncio.current_task(loop)
    if caller is not None:
        _leave_task(loop, caller)
    _enter_task(loop, task)
    try:
        context.run(started.first_part)
    finally:
        _leave_task(loop, task)
        if caller is not None:
            _enter_task(loop, caller)
    if started.ended is None:
        return task  # suspended: the task goes on from there
    future: asyncio.Future[T] = loop.create_future()  # done: the task's first step just ends
    if isinstance(started.ended, StopIteration):
        future.set_result(started.ended.value)
    elif isinstance(started.ended, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(started.ended)
    return future


class _Started(Coroutine[Any, Any, Any]):
    """``coro`` for a task whose first part :func:`start_eagerly` runs in the caller's turn
    (:meth:`first_part`): the task's first step waits for what that part suspended on, or
    just ends if it ended; everything else (results, errors, a cancellation, even one
    before that first step) goes to ``coro`` as if the task had run it from the start."""

    __slots__ = ("_coro", "_first", "_yielded", "ended")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._yielded: Any = None
        self._first = True
        #: How the first part ended: its StopIteration, or what it raised (None: suspended).
        self.ended: BaseException | None = None

    def first_part(self) -> None:
        try:
            self._yielded = self._coro.send(None)
            if asyncio.isfuture(self._yielded):
                # taken, as a task takes it at once: C futures read a set flag as "already
                # awaited" and fail another awaiter of the same future until it is cleared
                self._yielded._asyncio_future_blocking = False
        except (KeyboardInterrupt, SystemExit) as exc:
            self.ended = asyncio.CancelledError()  # the task's step just ends
            raise exc
        except BaseException as exc:  # noqa: BLE001 - handed to the returned future
            self.ended = exc

    def send(self, value: Any) -> Any:
        if self._first:
            self._first = False
            if self.ended is not None:
                raise StopIteration  # the outcome went to start_eagerly's future
            waited = self._yielded
            if not asyncio.isfuture(waited):
                return waited  # a bare yield: the task steps again
            if not waited.done():
                waited._asyncio_future_blocking = True  # as its await left it: the task takes it
                return waited
            waited._asyncio_future_blocking = False  # done meanwhile: go on at once
        return self._coro.send(value)

    def throw(self, exc: Any, *args: Any) -> Any:
        if self._first:  # cancelled before it waited: what it waits for goes too, as in a task
            self._first = False
            if self.ended is not None:
                raise StopIteration
            if isinstance(exc, asyncio.CancelledError) and asyncio.isfuture(self._yielded):
                self._yielded.cancel()
        return self._coro.throw(exc, *args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        raise TypeError("driven by the task start_eagerly makes; await that task instead")
