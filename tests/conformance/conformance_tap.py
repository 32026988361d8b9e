"""What a conformance test may see and do on the traffic between a fork and its master.

Every transport applies one :class:`Tap` at its own seam: the in-process transport wraps the
master's handler (:class:`TappedHandler`), message transports (the wire over a pipe, WebRTC)
pass each RxDB-wire message through :meth:`Tap.to_fork` / :meth:`Tap.to_master`. Tests then
count traffic, corrupt the master's answers and drop stream events the same way everywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from reactivex import Observable
from reactivex import operators as ops

from p2pdb.replication import ChangesBatch, ReplicationHandler, Resync, WriteRow

#: The id of the pushed stream events in RxDB's request/response protocol.
STREAM_ID = "masterChangeStream$"
WAIT = 10.0  # upper bound for one expected event (they take milliseconds; WebRTC ~0.1 s)

Answer = dict[str, Any]  # a pull answer in wire form: {"documents": [...], "checkpoint": ...}
Corruption = Callable[[Answer], object]


class Tap:
    """Counters and faults for one fork/master pair (see the module docstring)."""

    def __init__(self) -> None:
        self.pull_answers = 0  # answers to changes_since the fork received
        self.pulled: list[str] = []  # ids of documents in those answers and in stream events
        self.pushed: list[str] = []  # ids of rows the master received
        self.dropped = 0  # stream events dropped while drop_stream was set
        self.corrupted = 0  # answers replaced by a corruption
        self.drop_stream = False
        self._corruptions: list[Corruption] = []
        self._changed = asyncio.Event()

    def corrupt_next_answers(self, *corruptions: Corruption) -> None:
        """Replace the next pull answers, one corruption each, in order."""
        self._corruptions.extend(corruptions)

    def reset_counts(self) -> None:
        """Forget what was counted so far (before a step whose traffic a test checks)."""
        self.pull_answers, self.pulled, self.pushed = 0, [], []

    async def wait(self, condition: Callable[[], bool], within: float = WAIT) -> None:
        """Wait until ``condition()`` holds, re-checked after every tapped message."""
        async with asyncio.timeout(within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    # -- seam hooks ----------------------------------------------------------------------

    def pull_answer(self, answer: Answer) -> object:
        """A pull answer on its way to the fork: counted, or replaced by a corruption."""
        self.pull_answers += 1
        self._changed.set()
        if self._corruptions:
            self.corrupted += 1
            return self._corruptions.pop(0)(answer)
        self.pulled.extend(_ids(answer.get("documents")))
        return answer

    def stream_event(self, documents: object) -> bool:
        """A stream event (a batch's documents, or None for RESYNC): False = drop it."""
        self._changed.set()
        if self.drop_stream:
            self.dropped += 1
            return False
        self.pulled.extend(_ids(documents))
        return True

    def push(self, rows: object) -> None:
        """Rows of a write on their way to the master."""
        self._changed.set()
        if isinstance(rows, list):
            for row in rows:
                new = row.new_document_state if isinstance(row, WriteRow) else None
                if isinstance(row, dict):
                    new = row.get("newDocumentState", row.get("new_document_state"))
                if isinstance(new, dict):
                    self.pushed.append(str(new.get("id")))

    def to_fork(self, message: object) -> object | None:
        """An RxDB-wire message arriving at the fork; None = drop it."""
        if not isinstance(message, dict):
            return message
        result = message.get("result")
        if message.get("id") == STREAM_ID:
            documents = result.get("documents") if isinstance(result, dict) else None
            return message if self.stream_event(documents) else None
        if isinstance(result, dict) and "documents" in result and "checkpoint" in result:
            return {**message, "result": self.pull_answer(result)}
        return message

    def to_master(self, message: object) -> object:
        """An RxDB-wire message arriving at the master."""
        if isinstance(message, dict) and message.get("method") == "masterWrite":
            params = message.get("params")
            self.push(params[0] if isinstance(params, list) and params else None)
        return message


def _ids(documents: object) -> list[str]:
    if not isinstance(documents, list):
        return []
    return [str(d.get("id")) for d in documents if isinstance(d, dict)]


class TappedHandler:
    """A replication handler passing the master's answers and stream through a :class:`Tap`."""

    def __init__(self, inner: ReplicationHandler, tap: Tap) -> None:
        self.inner = inner
        self.tap = tap

    async def changes_since(self, checkpoint: Any, batch_size: int) -> Any:
        batch = await self.inner.changes_since(checkpoint, batch_size)
        # the fork accepts any {"documents", "checkpoint"} mapping, and checks it
        return self.tap.pull_answer({"documents": batch.documents, "checkpoint": batch.checkpoint})

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        self.tap.push(list(rows))
        return await self.inner.write(rows)

    def stream(self) -> Observable[ChangesBatch | Resync]:
        def keep(item: ChangesBatch | Resync) -> bool:
            return self.tap.stream_event(item.documents if isinstance(item, ChangesBatch) else None)

        return self.inner.stream().pipe(ops.filter(keep))
