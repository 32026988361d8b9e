"""Ending tasks without losing the caller's own cancellation.

``task.cancel()`` then ``with suppress(CancelledError): await task`` looks like the way to
stop a task, but it swallows a cancellation of the *caller* that arrives while it waits:
the caller's ``CancelledError`` and the task's look alike. A replication's push direction
lost ``pause()``'s cancellation that way while it stopped its live pushes after a failed
push, and went on retrying for ever, so ``pause()`` (and ``cancel()``, and closing the
database) never returned. These helpers wait for the tasks to end and raise the caller's
cancellation afterwards, never in the middle: nothing is left running, nothing is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

__all__ = ["cancel_and_wait", "run_all", "settle", "settle_unless_cancelling"]


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and return once every one of them has ended. A cancellation of
    the caller meanwhile is raised then (they are not cancelled twice: a second
    cancellation could cut short what a task does on its way out)."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await _wait_all(pending, cancel=False)


async def settle(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Return once every one of ``tasks`` has ended.

    If the caller is cancelled meanwhile, the tasks are cancelled and still waited for,
    then the caller's ``CancelledError`` is raised. Otherwise the first task that failed
    (with anything but a cancellation) has its exception raised; a cancelled task is not
    an error.
    """
    await _wait_all(list(tasks), cancel=True)


async def settle_unless_cancelling(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """:func:`settle`, or :func:`cancel_and_wait` if the caller is being cancelled already
    (a ``finally`` on its way out: its cancellation was delivered, and waiting for the
    tasks to finish on their own would hold it up)."""
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        await cancel_and_wait(tasks)
    else:
        await settle(tasks)


async def run_all(coros: Iterable[Coroutine[Any, Any, Any]]) -> None:
    """Run ``coros`` at once and wait for all of them. The first that fails has the others
    cancelled (and waited for), then its exception raised; a cancellation of the caller
    cancels them all the same way."""
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        # the ended ones' failures, retrieved before anything else can raise
        failures = [task.exception() for task in tasks if task.done() and not task.cancelled()]
        await cancel_and_wait([task for task in tasks if not task.done()])
    for failure in failures:
        if failure is not None:
            raise failure


async def _wait_all(every: list[asyncio.Future[Any]], *, cancel: bool) -> None:
    pending = [task for task in every if not task.done()]
    cancelled: asyncio.CancelledError | None = None
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError as exc:  # ours, not a task's: asyncio.wait raises none
            if cancel and cancelled is None:
                for task in pending:
                    task.cancel()
            cancelled = exc
        pending = [task for task in pending if not task.done()]
    failures = [task.exception() for task in every if not task.cancelled()]  # all retrieved
    if cancelled is not None:
        raise cancelled
    for failure in failures:
        if failure is not None:
            raise failure
