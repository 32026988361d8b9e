"""start_eagerly: what runs at once, what runs later, and that a started coroutine ends as a
task's would (results, errors, cancellation, its own context)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from p2pdb.eager import start_eagerly

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="caller")


async def test_a_coroutine_that_never_suspends_is_done_when_the_call_returns() -> None:
    steps: list[str] = []

    async def quick() -> int:
        steps.append("ran")
        return 7

    future = start_eagerly(quick())
    assert steps == ["ran"] and future.done()
    assert await future == 7


async def test_the_part_before_the_first_suspension_runs_at_once_the_rest_later() -> None:
    steps: list[str] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def two_parts() -> str:
        steps.append("before")
        got = await gate
        steps.append("after")
        return got + "!"

    future = start_eagerly(two_parts())
    assert steps == ["before"] and not future.done()
    gate.set_result("opened")
    assert await asyncio.wait_for(future, 5) == "opened!"
    assert steps == ["before", "after"]


async def test_bare_yields_and_nested_awaits_resume_in_order() -> None:
    steps: list[int] = []

    async def inner(n: int) -> int:
        await asyncio.sleep(0)
        steps.append(n)
        return n

    async def outer() -> int:
        total = 0
        for n in range(3):
            total += await inner(n)
        return total

    assert await asyncio.wait_for(start_eagerly(outer()), 5) == 3
    assert steps == [0, 1, 2]


async def test_an_error_raised_at_once_or_later_reaches_the_awaiter() -> None:
    async def fails_now() -> None:
        raise ValueError("now")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    now = start_eagerly(fails_now())
    assert now.done()
    with pytest.raises(ValueError, match="now"):
        await now
    with pytest.raises(KeyError, match="later"):
        await asyncio.wait_for(start_eagerly(fails_later()), 5)


async def test_cancelling_the_rest_runs_the_coroutines_cleanup() -> None:
    cleaned = asyncio.Event()
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        try:
            await gate
        finally:
            cleaned.set()

    future = start_eagerly(waits())
    assert not future.done()
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    assert cleaned.is_set() and gate.cancelled()


async def test_a_context_variable_set_by_the_coroutine_stays_its_own() -> None:
    seen: list[str] = []

    async def sets() -> None:
        VAR.set("coroutine")
        await asyncio.sleep(0)
        seen.append(VAR.get())

    await asyncio.wait_for(start_eagerly(sets()), 5)
    assert seen == ["coroutine"]
    assert VAR.get() == "caller"


@pytest.mark.parametrize("turns", [0, 3])
async def test_a_cancellation_before_or_after_the_task_waited_reaches_the_coroutine(
    turns: int,
) -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    outcome: list[str] = []

    async def waits() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    future = start_eagerly(waits())
    for _ in range(turns):
        await asyncio.sleep(0)
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    assert outcome == ["cancelled"] and gate.cancelled()


async def test_the_coroutine_is_its_own_current_task_and_a_timeout_in_it_cancels_only_it() -> None:
    seen: list[asyncio.Task[Any] | None] = []

    async def times_out() -> None:
        seen.append(asyncio.current_task())
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)

    caller = asyncio.current_task()
    future = start_eagerly(times_out())
    assert seen == [future] and asyncio.current_task() is caller
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(future, 5)
    assert caller is not None and not caller.cancelling()


async def test_started_from_a_plain_callback_outside_any_task() -> None:
    loop = asyncio.get_running_loop()
    started: asyncio.Future[asyncio.Future[str]] = loop.create_future()

    async def waits_a_turn() -> str:
        assert asyncio.current_task() is not None
        await asyncio.sleep(0)
        return "done"

    loop.call_soon(lambda: started.set_result(start_eagerly(waits_a_turn())))
    assert await asyncio.wait_for(await started, 5) == "done"


async def test_a_future_the_caller_awaits_too_right_after_the_start() -> None:
    """The started coroutine and its caller wait for the same future (a push window
    waiting for the one ahead while the caller waits for it too), the caller first: both
    wake up."""
    loop = asyncio.get_running_loop()
    shared: asyncio.Future[str] = loop.create_future()

    async def waits_for_shared() -> str:
        return await shared + " (started)"

    future = start_eagerly(waits_for_shared())
    loop.call_later(0.01, shared.set_result, "done")
    assert await shared == "done"  # this task takes the future before the started one's step
    assert await asyncio.wait_for(future, 5) == "done (started)"
