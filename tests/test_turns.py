"""PersistTurns (p2pdb/replication/turns.py): many pushes together, or one pull alone, and a
waiting pull holds new pushes back."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

from p2pdb.replication.turns import PersistTurns

WAIT = 5.0


async def holding(
    turn: AbstractAsyncContextManager[None], entered: asyncio.Event, leave: asyncio.Event
) -> None:
    async with turn:
        entered.set()
        await leave.wait()


def start(
    turn: AbstractAsyncContextManager[None],
) -> tuple[asyncio.Task[None], asyncio.Event, asyncio.Event]:
    entered, leave = asyncio.Event(), asyncio.Event()
    return asyncio.ensure_future(holding(turn, entered, leave)), entered, leave


async def entered_within(event: asyncio.Event, seconds: float = WAIT) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def test_pushes_hold_turns_together_and_a_pull_waits_for_them() -> None:
    turns = PersistTurns()
    first, first_in, first_out = start(turns.push())
    second, second_in, second_out = start(turns.push())
    assert await entered_within(first_in) and await entered_within(second_in)
    assert turns.pushes == 2
    pull, pull_in, pull_out = start(turns.pull())
    assert not await entered_within(pull_in, 0.05)
    first_out.set()
    await first
    assert not await entered_within(pull_in, 0.05)  # one push still holds a turn
    second_out.set()
    await second
    assert await entered_within(pull_in)
    assert turns.pulling and turns.pushes == 0
    pull_out.set()
    await pull
    assert not turns.pulling


async def test_a_waiting_pull_holds_new_pushes_back() -> None:
    turns = PersistTurns()
    push, push_in, push_out = start(turns.push())
    assert await entered_within(push_in)
    pull, pull_in, pull_out = start(turns.pull())
    await asyncio.sleep(0)  # the pull is waiting
    assert turns.pulls_waiting == 1
    late, late_in, late_out = start(turns.push())
    assert not await entered_within(late_in, 0.05)  # not beside the first: the pull is next
    push_out.set()
    assert await entered_within(pull_in)
    assert not late_in.is_set()
    pull_out.set()
    assert await entered_within(late_in)
    late_out.set()
    await asyncio.gather(push, pull, late)


async def test_pulls_take_turns_alone() -> None:
    turns = PersistTurns()
    one, one_in, one_out = start(turns.pull())
    two, two_in, two_out = start(turns.pull())
    assert await entered_within(one_in)
    assert not await entered_within(two_in, 0.05)
    one_out.set()
    assert await entered_within(two_in)
    two_out.set()
    await asyncio.gather(one, two)


async def test_a_pull_cancelled_while_waiting_lets_pushes_go() -> None:
    turns = PersistTurns()
    push, push_in, push_out = start(turns.push())
    assert await entered_within(push_in)
    pull, pull_in, _ = start(turns.pull())
    await asyncio.sleep(0)
    late, late_in, late_out = start(turns.push())
    assert not await entered_within(late_in, 0.05)
    pull.cancel()
    assert await entered_within(late_in)  # nobody waits to pull any more
    assert turns.pulls_waiting == 0 and not pull_in.is_set()
    push_out.set()
    late_out.set()
    await asyncio.gather(push, late)
