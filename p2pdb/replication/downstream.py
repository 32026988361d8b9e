"""Downstream: pull the master's changes into the fork.

Checkpoint iteration (``changes_since`` from the stored down-checkpoint until a short
batch), then the live stream's batches; a ``RESYNC`` or a restart goes back to iteration.
Each master state is written locally unless the fork holds unpushed changes of it (upstream
pushes those and resolves the conflict).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..causal import Vector, state_vector, take
from ..errors import ConflictError, ValidationError
from ..storage import ABSENT, Write, WriteTxn
from ..storage.base import DamagedDocument
from ..streams import EventStream
from .access import apply_modifier
from .causal_order import fast_forward, speaks_causal, stale
from .checkpoints import Direction, StateUpdate, write_to_the_end
from .direction import DirectionTask, ReplicationContext
from .protocol import RESYNC, ChangesBatch, Resync, as_changes_batch, from_wire, to_wire

__all__ = ["FETCH_AHEAD", "Downstream"]

#: Ask for the next batch while the current one is written (the master's read and the
#: fork's write overlap).
FETCH_AHEAD = True

Doc = dict[str, Any]
#: Per document id: the prepared user fields, the deleted flag and the master's wire state.
Incoming = dict[str, tuple[Doc, bool, Doc]]


class Downstream(DirectionTask):
    """The pull direction of one replication."""

    name: ClassVar[Direction] = "down"

    def __init__(self, context: ReplicationContext) -> None:
        super().__init__(context, context.options.pull)
        #: Stored states written from the master.
        self.received: EventStream[Doc] = EventStream()
        self._queue: asyncio.Queue[tuple[int, ChangesBatch | Resync]] = asyncio.Queue()
        # Stream events are applied only after a full pull since the last (re)start or
        # failure; before that a RESYNC is queued that covers them.
        self._caught_up = False
        # the causal vectors of the master states being applied, by id (p2pdb.causal; set
        # and read under the persist lock, in one _persist)
        self._vectors: dict[str, Vector | None] = {}

    def restart(self) -> None:
        """Forget queued stream items and start with a full pull (on start and resume)."""
        self._caught_up = False
        self._queue = asyncio.Queue()
        self.enqueue(RESYNC)

    def enqueue(self, item: ChangesBatch | Resync) -> None:
        """Queue an item of the master's stream (or a RESYNC), numbered as it arrives."""
        self._queue.put_nowait((self.context.arrivals.next(), item))

    def pending(self) -> bool:
        """True while stream items or a RESYNC wait in the queue."""
        return not self._queue.empty()

    def failed(self) -> None:
        """Stop applying stream events until the next full pull."""
        self._caught_up = False  # events queued now may follow a gap

    def retry(self) -> None:
        """Pull again from the stored checkpoint."""
        self.enqueue(RESYNC)

    async def run(self) -> None:
        """Take queued items: a RESYNC pulls everything, a stream batch is applied."""
        arrivals = self.context.arrivals
        while True:
            arrival, item = await self._queue.get()
            if item == RESYNC:
                await self._pull_all()
            elif (
                isinstance(item, ChangesBatch)
                and self._caught_up
                and arrival > arrivals.last_pull_end
            ):
                self.set_busy(True)
                if not await self._persist(item.documents, item.checkpoint, arrival):
                    self.enqueue(RESYNC)
                self.succeeded()
            self.set_busy(False)
            if not self.context.options.live and self.first_done:
                return

    async def _pull_all(self) -> None:
        """Pull batches from the stored checkpoint until a short one. The next batch is
        asked for while the current one is persisted (the master's read and the fork's
        write overlap); it is dropped if the current one was doubtful."""
        self.set_busy(True)
        batch_size = self.context.options.batch_size
        checkpoint = self.context.checkpoints.down()
        ahead: asyncio.Future[tuple[ChangesBatch, int]] | None = None
        try:
            while True:
                if ahead is None:
                    batch, arrival = await self._fetch(checkpoint)
                else:
                    batch, arrival = await ahead
                    ahead = None
                full = len(batch.documents) >= batch_size
                if full and FETCH_AHEAD:  # its checkpoint is known: ask for the next one now
                    ahead = asyncio.ensure_future(self._fetch(batch.checkpoint))
                complete = await self._persist(batch.documents, batch.checkpoint, arrival)
                self.succeeded()
                if not complete:
                    # pull the same batch again, after the push that made it doubtful
                    if ahead is not None:
                        await _drop(ahead)
                        ahead = None
                    continue
                checkpoint = batch.checkpoint
                if not full:
                    break
        finally:
            if ahead is not None:
                await _drop(ahead)
        self._caught_up = True
        self.first_done = True
        self.set_busy(False)

    async def _fetch(self, checkpoint: Any) -> tuple[ChangesBatch, int]:
        """One batch after ``checkpoint`` and its arrival number (taken as it arrives)."""
        answer = await self.context.handler.changes_since(
            checkpoint, self.context.options.batch_size
        )
        return as_changes_batch(answer), self.context.arrivals.pull_answered()

    async def _persist(self, documents: Sequence[object], checkpoint: Any, arrival: int) -> bool:
        """Apply master states; False if some were doubtful and the checkpoint was kept."""
        arrivals = self.context.arrivals
        # never interleaved with a push's read-decide-write (see Arrivals.persist_lock)
        async with arrivals.persist_lock:
            incoming, complete = await self._incoming(documents, arrival)
            if arrivals.superseded:  # a newer replication of this id runs (see Arrivals)
                return True
            writes, update = self._decide(incoming)
            if complete:
                update.set_checkpoint("down", checkpoint)
            await self._write(writes, update)
            arrivals.forget_before(arrival)
            return complete

    async def _incoming(self, documents: Sequence[object], arrival: int) -> tuple[Incoming, bool]:
        """The valid, not doubtful master states by id, after ``pull_modifier`` (a state
        it drops is skipped); False if some were doubtful."""
        c = self.context.collection
        pk = c.schema.primary_key
        is_equal = c.conflict_handler.is_equal
        modifier = self.context.options.pull_modifier
        causal = speaks_causal(self.context.handler)
        self._vectors = {}
        incoming: Incoming = {}
        complete = True
        for doc in documents:
            try:
                vector = None
                if causal and isinstance(doc, Mapping):  # before any hook sees the document
                    doc, vector = take(doc)
                if modifier is not None and isinstance(doc, Mapping):
                    doc = await apply_modifier(modifier, dict(doc))
                    if doc is None:
                        continue
                user, deleted = from_wire(doc)
                prepared = c.prepare(user)
            except ValidationError as exc:
                doc_id = doc.get(pk) if isinstance(doc, Mapping) else None
                exc.parameters.setdefault("document_id", doc_id)
                self.context.report("down", exc)  # not stored; the others go on
                continue
            # the wire form (prepare refuses "_" fields, so nothing to strip)
            wire = {**prepared, "_deleted": deleted}
            if self.context.arrivals.pushed_after(prepared[pk], arrival):
                # sent before our push of it was answered (see Arrivals): the echo of that
                # push (RxDB masters echo every push) is harmless; anything else is doubtful
                pushed = self.context.arrivals.last_pushed(prepared[pk])
                if pushed is None or not is_equal(pushed, wire):
                    complete = False
                continue
            incoming[prepared[pk]] = (prepared, deleted, wire)
            self._vectors[prepared[pk]] = vector
        return incoming, complete

    def _decide(self, incoming: Incoming) -> tuple[list[Write], StateUpdate]:
        """The local writes and assumed master states that apply ``incoming``.

        With a selector, a state that does not match is applied only to a document the fork
        already shares (it holds it, or knows a master state of it): a document leaving the
        selector gets its new state instead of staying stale; one never shared stays out.
        """
        c = self.context.collection
        selected = self.context.filter.matches
        is_equal = c.conflict_handler.is_equal
        forks = c.database.storage.get_or_damaged(c.name, list(incoming))
        assumed = self.context.checkpoints.assumed(incoming)
        writes: list[Write] = []
        update = self.context.checkpoints.update()
        for doc_id, (user, deleted, master) in incoming.items():
            fork = forks.get(doc_id)
            if isinstance(fork, DamagedDocument):  # unreadable here: the master's copy repairs it
                writes.append(Write(user, deleted, expected=fork.revision))
                update.set_assumed(doc_id, master)
                continue
            fork_wire = to_wire(fork) if fork is not None else None
            known = assumed.get(doc_id)
            if fork is None and known is None and not selected(master):
                continue  # outside the selector and never shared: not pulled
            if fork_wire is not None and is_equal(fork_wire, master):
                if known is None or not is_equal(known, master):
                    update.set_assumed(doc_id, master)
                continue
            vector = self._vectors.get(doc_id)  # a copy of the master's state, with its history
            if stale(vector, state_vector(fork)):
                continue  # an ancestor of what the fork holds (a late arrival): never applied
            if (
                fork_wire is not None
                and (known is None or not is_equal(known, fork_wire))
                and not fast_forward(state_vector(fork), vector)  # it follows the fork's
            ):
                continue  # unpushed local changes: upstream pushes them and resolves
            expected = fork["_rev"] if fork else ABSENT
            writes.append(Write(user, deleted, expected, vector, new_event=vector is None))
            update.set_assumed(doc_id, master)
        return writes, update

    async def _write(self, writes: list[Write], update: StateUpdate) -> None:
        """Write the documents and, in the same transaction, the state that covers them."""
        c = self.context.collection
        pk = c.schema.primary_key
        origin = self.context.origin

        def persist(txn: WriteTxn) -> list[Doc]:
            written: list[Doc] = []
            if writes:
                for write, outcome in zip(writes, txn.put(c.name, writes, origin), strict=True):
                    if isinstance(outcome, ConflictError):  # a local write got in first
                        update.keep_assumed(write.document[pk])
                    else:
                        written.append(outcome)
            update.write(txn)
            return written

        def emit(written: list[Doc]) -> None:
            for state in written:
                self.received.on_next(state)

        await write_to_the_end(c.database.storage, persist, emit)  # emitted even if cancelled


async def _drop(task: asyncio.Future[Any]) -> None:
    """Cancel a fetch ahead that is no longer wanted and wait for it to end."""
    task.cancel()  # nothing if it is done
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are cancelled ourselves, not just the fetch
    except Exception:  # noqa: S110 - its outcome (a result or an error) is not wanted
        pass
