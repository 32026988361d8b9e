"""Downstream: pull the master's changes into the fork.

Checkpoint iteration (``changes_since`` from the stored down-checkpoint until a short
batch), then the live stream's batches; a ``RESYNC`` or a restart goes back to iteration.
Each master state is written locally unless the fork holds unpushed changes of it (upstream
pushes those and resolves the conflict).

A stream batch of more than :data:`SLICE_DOCS` documents is written in slices, one
transaction each, its checkpoint stored only with the last one; between slices, small live
batches that arrived meanwhile and share no document with anything still unsaved are
applied ahead, without moving the checkpoint (see ``docs/replication.md``, priority lanes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..causal import Vector, state_vector, take
from ..errors import ConflictError, ValidationError
from ..storage import ABSENT, SMALL_WRITE_ROWS, Write, WriteTxn
from ..storage.base import DamagedDocument
from ..streams import EventStream
from ..tasks import cancel_and_wait
from .access import apply_modifier
from .causal_order import fast_forward, speaks_causal, stale
from .checkpoints import Direction, StateUpdate, write_to_the_end
from .direction import DirectionTask, ReplicationContext
from .lanes import LIVE_MAX_DOCS
from .protocol import RESYNC, ChangesBatch, Resync, as_changes_batch, from_wire, to_wire
from .revs import Held, fill_stubs, speaks_revs

__all__ = ["FETCH_AHEAD", "SLICE_DOCS", "Downstream"]

#: Ask for the next batch while the current one is written (the master reads meanwhile).
FETCH_AHEAD = True
#: A received stream batch is written in transactions of at most this many documents, so a
#: live change arriving meanwhile waits for one slice, not for the whole batch.
SLICE_DOCS = 200
_KEEP = object()  # stands for the checkpoint: store none (an unsaved slice, or a batch ahead)


@dataclass(frozen=True, slots=True)
class _Floor:
    """Queued behind the older items when a batch went ahead: its checkpoint, stored once they
    are saved, unless a newer one was stored or a RESYNC waits (an older one was doubtful)."""

    checkpoint: Any


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
        self._queue: deque[tuple[int, ChangesBatch | Resync | _Floor]] = deque()
        self._stored_arrival = 0  # the arrival number of the newest checkpoint stored
        # small live batches to apply before the queue and between slices (see _goes_ahead)
        self._ahead: deque[tuple[int, ChangesBatch]] = deque()
        # document ids of the queued batches and of the unsaved slices of the one being
        # written: a batch holding one of them never goes ahead
        self._held: Counter[object] = Counter()
        self._slicing = False  # a stream batch is being written in slices
        self._wake = asyncio.Event()
        # Stream events are applied only after a full pull since the last (re)start or
        # failure; before that a RESYNC is queued that covers them.
        self._caught_up = False
        # the causal vectors of the master states being applied, by id (p2pdb.causal), and
        # the stubs equal to our own states (revs.Held: only their assumed state is
        # recorded); set and read in a pull's turn, in one _persist
        self._vectors: dict[str, Vector | None] = {}
        self._same: dict[str, Doc] = {}
        # cleared while a master's RESYNC waits for our pushes (see state.py): no request
        # goes out meanwhile, so the next one shows the master that we pushed
        self._may_pull = asyncio.Event()
        self._may_pull.set()

    def hold_pulls(self, hold: bool) -> None:
        """Hold back (True) or let go (False) this direction's ``masterChangesSince``
        requests; a pull under way waits before its next request."""
        if hold:
            self._may_pull.clear()
        else:
            self._may_pull.set()

    def restart(self) -> None:
        """Forget queued stream items and start with a full pull (on start and resume)."""
        self._caught_up = False
        self._queue.clear()
        self._ahead.clear()
        self._held.clear()
        self._slicing = False
        self.enqueue(RESYNC)

    def enqueue(self, item: ChangesBatch | Resync) -> None:
        """Queue an item of the master's stream (or a RESYNC), numbered as it arrives."""
        arrival = self.context.arrivals.next()
        if isinstance(item, ChangesBatch):
            self.context.arrivals.seen(self._ids(item.documents))
        if isinstance(item, ChangesBatch) and self._goes_ahead(item):
            self._ahead.append((arrival, item))
        else:
            self._queue.append((arrival, item))
            if isinstance(item, ChangesBatch):
                self._held.update(self._ids(item.documents))
        self._wake.set()

    def _ids(self, documents: Sequence[object]) -> list[object]:
        pk = self.context.collection.schema.primary_key
        return [d.get(pk) if isinstance(d, Mapping) else None for d in documents]

    def _release(self, documents: Sequence[object]) -> None:
        """Those documents are saved (or dropped): no longer held against batches ahead."""
        for doc_id in self._ids(documents):
            self._held[doc_id] -= 1
            if self._held[doc_id] <= 0:
                del self._held[doc_id]

    def _goes_ahead(self, item: ChangesBatch) -> bool:
        """A small live batch is applied ahead of queued batches and unsaved slices that
        hold none of its documents, when no RESYNC waits (it arrived after them: the
        stale-state rule judges it by its own arrival number). A ``pull_modifier`` may
        change ids, so with one nothing goes ahead."""
        if (
            not self._caught_up
            or not (self._queue or self._slicing)
            or len(item.documents) > LIVE_MAX_DOCS
            or self.context.options.pull_modifier is not None
            or any(queued == RESYNC for _, queued in self._queue)
            or not item.documents  # nothing to hurry (a checkpoint past unreadable rows)
        ):
            return False
        ids = self._ids(item.documents)
        return None not in ids and not any(doc_id in self._held for doc_id in ids)

    async def _next(self) -> tuple[int, ChangesBatch | Resync | _Floor, bool]:
        """The next item: a batch ahead first (True), else the queue's head (False)."""
        while not (self._ahead or self._queue):
            self._wake.clear()
            await self._wake.wait()
        if self._ahead:
            arrival, batch = self._ahead.popleft()
            return arrival, batch, True
        arrival, item = self._queue.popleft()
        return arrival, item, False

    def pending(self) -> bool:
        """True while stream items or a RESYNC wait in the queue."""
        return bool(self._queue or self._ahead)

    def failed(self) -> None:
        """Stop applying stream events until the next full pull (see :meth:`gap`)."""
        self.gap()

    def gap(self) -> None:
        """Stream events may be lost: apply none (nor their checkpoints) until a full pull."""
        self._caught_up = False

    def retry(self) -> None:
        """Pull again from the stored checkpoint."""
        self.enqueue(RESYNC)

    async def run(self) -> None:
        """Take queued items: a RESYNC pulls everything, a stream batch is applied."""
        arrivals = self.context.arrivals
        while True:
            arrival, item, ahead = await self._next()
            if item == RESYNC:
                await self._pull_all()
            elif isinstance(item, _Floor):
                if (
                    self._caught_up
                    and arrival > max(self._stored_arrival, arrivals.last_pull_end)
                    and not any(queued == RESYNC for _, queued in self._queue)
                ):
                    self.set_busy(True)  # a write of the pull: `active` says so
                    await self._persist([], item.checkpoint, arrival)
            elif not isinstance(item, ChangesBatch):
                pass
            elif ahead:
                await self._apply_ahead(arrival, item)
            elif self._caught_up and arrival > arrivals.last_pull_end:
                await self._apply_sliced(arrival, item)
            else:
                self._release(item.documents)  # covered by a pull, or after a gap
            self.set_busy(False)
            if not self.context.options.live and self.first_done:
                return

    async def _apply_ahead(self, arrival: int, batch: ChangesBatch) -> None:
        """Apply a batch that went ahead of older ones: its checkpoint is not stored (the
        older ones store theirs), nor are pushes forgotten (they may still need them)."""
        if not self._caught_up or arrival <= self.context.arrivals.last_pull_end:
            return
        self.set_busy(True)
        if not await self._persist(batch.documents, _KEEP, arrival, forget=False):
            self._doubtful()
        else:
            self._queue.append((arrival, _Floor(batch.checkpoint)))
        self.succeeded()

    async def _apply_sliced(self, arrival: int, batch: ChangesBatch) -> None:
        """Apply a stream batch in slices of :data:`SLICE_DOCS`; the checkpoint is stored
        with the last slice, if no slice was doubtful. A crash or cancellation between
        slices leaves the checkpoint before them: they are pulled again (and found equal)."""
        self.set_busy(True)
        documents = batch.documents
        bounds = list(range(0, len(documents), SLICE_DOCS)) or [0]
        complete = True
        done = 0
        self._slicing = True
        try:
            for start in bounds:
                part = documents[start : start + SLICE_DOCS]
                last = start == bounds[-1]
                checkpoint = batch.checkpoint if last and complete else _KEEP
                complete = await self._persist(part, checkpoint, arrival) and complete
                self._release(part)
                done = start + len(part)
                self.succeeded()
                if not last:
                    while self._ahead:  # live batches that arrived meanwhile
                        await self._apply_ahead(*self._ahead.popleft())
        finally:
            self._slicing = False
            self._release(documents[done:])
        if not complete:
            self._doubtful()

    def _doubtful(self) -> None:
        """A stream batch held a doubtful state (see Arrivals), so its checkpoint was not
        stored: pull again from the stored one, and apply nothing queued before that pull.
        A later batch would store its checkpoint, past the doubtful state for good (the
        pull would start after it, and the fork keep its older state of the document);
        the pull covers those batches."""
        self._caught_up = False
        self.enqueue(RESYNC)

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
        await self._may_pull.wait()
        answer = await self.context.handler.changes_since(
            checkpoint, self.context.options.batch_size
        )
        batch = as_changes_batch(answer)
        self.context.arrivals.seen(self._ids(batch.documents))
        return batch, self.context.arrivals.pull_answered()

    async def _persist(
        self, documents: Sequence[object], checkpoint: Any, arrival: int, *, forget: bool = True
    ) -> bool:
        """Apply master states; False if some were doubtful and the checkpoint was kept.
        ``checkpoint`` ``_KEEP``: none is stored."""
        arrivals = self.context.arrivals
        # never interleaved with a push's read-decide-write (.turns); a bare checkpoint: no
        async with arrivals.turns.pull() if documents else contextlib.nullcontext():
            incoming, complete = await self._incoming(documents, arrival)
            if arrivals.superseded:  # a newer replication of this id runs (see Arrivals)
                return True
            writes, update = self._decide(incoming)
            stored = complete and checkpoint is not _KEEP
            if stored:
                update.set_checkpoint("down", checkpoint)
            await self._write(writes, update)
            if stored:
                self._stored_arrival = max(self._stored_arrival, arrival)
            if forget:  # not while older items wait (a batch ahead)
                arrivals.forget_before(arrival)
            return complete

    async def _incoming(self, documents: Sequence[object], arrival: int) -> tuple[Incoming, bool]:
        """The valid, not doubtful master states by id, after ``pull_modifier`` (a state
        it drops is skipped); False if some were doubtful."""
        c = self.context.collection
        pk = c.schema.primary_key
        is_equal = c.conflict_handler.is_equal
        modifier = self.context.options.pull_modifier
        handler = self.context.handler
        causal = speaks_causal(handler)
        if speaks_revs(handler):  # stubs of relayed states: the fork's own, or fetched
            report = self._report
            documents = await fill_stubs(handler, c, documents, report, modified=bool(modifier))
        self._vectors, self._same = {}, {}
        incoming: Incoming = {}
        complete = True
        for doc in documents:
            if isinstance(doc, Held):  # the master holds exactly our state
                if not self.context.arrivals.pushed_after(doc.doc_id, arrival):
                    self._same[doc.doc_id] = doc.wire
                    continue
                doc = doc.document()  # a push of it was answered since: the full path
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

    def _report(self, error: Exception) -> None:
        self.context.report("down", error)

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
        assumed = self.context.checkpoints.assumed([*incoming, *self._same])
        writes: list[Write] = []
        update = self.context.checkpoints.update()
        for doc_id, held in self._same.items():  # the master's state is the fork's own
            known = assumed.get(doc_id)
            if doc_id not in incoming and (known is None or not is_equal(known, held)):
                update.set_assumed(doc_id, held)
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

        note = self.context.pulled.note if self.context.options.push else None

        def persist(txn: WriteTxn) -> list[Doc]:
            written: list[Doc] = []
            if writes:
                for write, outcome in zip(writes, txn.put(c.name, writes, origin), strict=True):
                    if isinstance(outcome, ConflictError):  # a local write got in first
                        update.keep_assumed(write.document[pk])
                    else:
                        written.append(outcome)
                        if note is not None:  # stored with it as its assumed state
                            note(outcome[pk], outcome["_rev"])
            update.write(txn)
            return written

        def emit(written: list[Doc]) -> None:
            for state in written:
                self.received.on_next(state)

        small = len(writes) + update.rows <= SMALL_WRITE_ROWS  # emitted even if cancelled:
        await write_to_the_end(c.database.storage, persist, emit, small=small)


async def _drop(task: asyncio.Future[Any]) -> None:
    """Cancel an unwanted fetch ahead and wait for its end (then raise our cancellation)."""
    with contextlib.suppress(Exception):  # its outcome (a result or an error) is not wanted
        await cancel_and_wait([task])
