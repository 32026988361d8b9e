"""Turns to read and update a replication's documents and assumed master states.

A pull and a push must never interleave their read-decide-write, or a state read by one
could be overwritten with a stale decision of the other (a pulled master state skipped for
good, or a stale state pushed over the master's). Pushes need no such care between
themselves: a document is never in two pushes at once (see :mod:`.upstream`). So
:class:`PersistTurns` lets any number of pushes hold a turn together (the bulk lane's
windows and the live lane's small pushes) and one pull hold one alone. While a pull waits,
no new push begins, so pushes in a row never hold a pull out for long.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

__all__ = ["PersistTurns"]


class PersistTurns:
    """Many pushes together, or one pull alone (see the module docstring)."""

    def __init__(self) -> None:
        self._pushes = 0  # pushes holding a turn
        self._pulling = False  # a pull holds one
        self._pulls_waiting = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def pushes(self) -> int:
        """Pushes holding a turn now."""
        return self._pushes

    @property
    def pulling(self) -> bool:
        """True while a pull holds its turn."""
        return self._pulling

    @property
    def pulls_waiting(self) -> int:
        """Pulls waiting for their turn (no new push begins meanwhile)."""
        return self._pulls_waiting

    @contextlib.asynccontextmanager
    async def push(self) -> AsyncIterator[None]:
        """Hold a push's turn, once no pull holds one or waits for one."""
        await self._until(lambda: not self._pulling and not self._pulls_waiting)
        self._pushes += 1
        try:
            yield
        finally:
            self._pushes -= 1
            if not self._pushes:
                self._wake()

    @contextlib.asynccontextmanager
    async def pull(self) -> AsyncIterator[None]:
        """Hold a pull's turn, once no push and no other pull holds one."""
        self._pulls_waiting += 1
        try:
            await self._until(lambda: not self._pulling and not self._pushes)
        finally:
            self._pulls_waiting -= 1
        self._pulling = True
        try:
            yield
        finally:
            self._pulling = False
            self._wake()

    async def _until(self, ready: Callable[[], bool]) -> None:
        try:
            while not ready():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
        except BaseException:
            self._wake()  # a pull that stops waiting holds no push back any more
            raise

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
