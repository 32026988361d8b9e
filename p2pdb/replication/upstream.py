"""Upstream: push the fork's changes to the master and resolve the conflicts it reports.

Walks the collection's own change sequence from the stored up-checkpoint and pushes every
document whose current state differs from its assumed master state, so documents that just
came down are never sent back. A conflict is resolved by the collection's conflict handler,
written locally, and pushed again by the next pass.

Two lanes. The **bulk lane** walks the sequence in windows of batches (rows the pull wrote
passed over unread, see :mod:`.pulled`), two windows in flight at most, and is the only one
that moves the up-checkpoint, in order, after a window was acknowledged. While it is busy, a
local commit of at
most :data:`LIVE_PUSH_MAX` documents is pushed at once by the **live lane**, beside the
batch in flight: it stores the assumed master states of what the master acknowledged, never
the checkpoint (the bulk lane finds those documents equal to their assumed states and sends
nothing when it walks past them). A document is never in two pushes at once: the live lane
leaves one the bulk lane (or another live push) has in flight to the bulk lane, which reads
its newer state later; and a window holding a document still in flight (in the window
ahead or a live push) waits for it and is read again. Both lanes hold the pull out: each
push holds a push's turn (:mod:`.turns`), which any number of pushes hold together.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..causal import state_vector
from ..conflicts import Conflict, resolve_conflict
from ..eager import start_eagerly
from ..errors import ConflictError, ReplicationError, ValidationError
from ..storage import SMALL_WRITE_ROWS, Write, WriteTxn
from ..streams import EventStream
from ..tasks import abandon, cancel_and_wait, settle_unless_cancelling
from .causal_order import stale
from .checkpoints import Direction, StateUpdate, write_to_the_end
from .direction import DirectionTask, ReplicationContext
from .protocol import WriteRow, from_wire, to_wire
from .push_send import PushSender, Vectors
from .revs import relayed_ids

__all__ = ["LIVE_PUSH_MAX", "ResolvedConflict", "Upstream"]

Doc = dict[str, Any]
#: Most documents of a local commit that the live lane pushes beside a bulk push.
LIVE_PUSH_MAX = 16
#: ``masterWrite`` batches of one window of the bulk lane, sent at once, as long as they
#: hold at most WINDOW_ROWS documents (two windows are in flight at most).
PUSH_WINDOW = 4
WINDOW_ROWS = 1000


class ResolvedConflict:
    """A conflict the handler resolved: its input and the state it chose."""

    __slots__ = ("conflict", "resolved")

    def __init__(self, conflict: Conflict, resolved: Doc) -> None:
        self.conflict = conflict
        self.resolved = resolved

    def __repr__(self) -> str:
        return f"<ResolvedConflict {self.resolved!r}>"


@dataclass(slots=True)
class _Push:
    """A push ready to send: its rows, their ids (marked in flight), what it stores."""

    rows: list[WriteRow]
    ids: set[str]
    revisions: dict[str, str]
    vectors: Vectors
    checkpoint: int | None
    running: bool = False  # its task began (and so takes its ids out of flight itself)


@dataclass(slots=True)
class _Outcome:
    """What one push decided: stored state, local resolutions, events to emit after."""

    update: StateUpdate
    resolutions: list[Write] = field(default_factory=list)
    resolved: list[ResolvedConflict] = field(default_factory=list)


class Upstream(DirectionTask):
    """The push direction of one replication."""

    name: ClassVar[Direction] = "up"

    def __init__(self, context: ReplicationContext) -> None:
        super().__init__(context, context.options.push)
        #: Wire documents the master accepted.
        self.sent: EventStream[Doc] = EventStream()
        #: Conflicts resolved by the collection's conflict handler.
        self.conflicts: EventStream[ResolvedConflict] = EventStream()
        self._local_change = asyncio.Event()
        self._noticed: int | None = None  # the collection's last seq at the last commit seen
        self._pushing: set[str] = set()  # ids in a push in flight (either lane)
        self._landed = asyncio.Event()  # set when a push ended (its ids left _pushing)
        self._live: set[asyncio.Task[None]] = set()  # live pushes (owned by run())
        #: Live pushes started so far (each a commit of at most LIVE_PUSH_MAX documents).
        self.live_pushes = 0
        self._relayed: set[str] = set()  # relayed states to push: asked first (revs.py)
        self._sender = PushSender(context, self._relayed)

    def local_change(self) -> None:
        """The collection committed a write: push it (at once in the live lane, if the
        bulk lane is busy and the commit is small)."""
        self._local_change.set()
        if self._noticed is None:
            return  # not running
        storage, name = self.context.collection.database.storage, self.context.collection.name
        since, self._noticed = self._noticed, storage.last_seq(name)
        if self.busy and self.context.options.live and self._noticed > since:
            task = asyncio.get_running_loop().create_task(self._live_push(since, self._noticed))
            self._live.add(task)
            task.add_done_callback(self._live.discard)

    def pending(self) -> bool:
        """True while a local commit waits to be pushed."""
        return self._local_change.is_set()

    def failed(self) -> None:
        """Nothing to forget: the next pass reads the stored up-checkpoint."""

    def retry(self) -> None:
        """Push again from the stored up-checkpoint."""
        self._local_change.set()

    async def run(self) -> None:
        """Push everything since the up-checkpoint, then again after each local commit."""
        c = self.context.collection
        self._noticed = c.database.storage.last_seq(c.name)
        try:
            while True:
                self._local_change.clear()
                self.set_busy(True)
                await self._push_all()
                # idle only once the live pushes begun meanwhile ended too
                while running := [task for task in self._live if not task.done()]:
                    await settle_unless_cancelling(running)
                self.first_done = True
                self.set_busy(False)
                if not self.context.options.live:
                    return
                await self._local_change.wait()
        finally:
            self._noticed = None
            await cancel_and_wait(self._live)  # never loses a cancellation of ours (p2pdb.tasks)

    async def _push_all(self) -> None:
        while True:
            # never interleaved with a pull's read-decide-write (see .turns): read in a
            # push's turn, the listed states are current (no pull writes meanwhile)
            async with self.context.arrivals.turns.push():
                up = self.context.checkpoints.up()
                pairs, last = self._read(up)
                if not pairs and last == up:
                    return  # (rows the pull wrote only: the checkpoint moves past them)
                await self._push_windows(up, pairs, last)
            self.succeeded()

    def _read(self, since: int) -> tuple[list[tuple[int, Doc]], int]:
        """The next window of the change sequence: :data:`PUSH_WINDOW` batches, up to
        :data:`WINDOW_ROWS` rows (at least one batch), rows the pull wrote passed over."""
        c = self.context.collection
        batch_size = self.context.options.batch_size
        size = batch_size * max(1, min(PUSH_WINDOW, WINDOW_ROWS // batch_size))
        pairs, last = c.database.storage.changes_since(
            c.name, since, size, self.context.pulled.passes
        )
        self._note(pairs)
        return pairs, last

    async def _push_windows(self, start: int, pairs: list[tuple[int, Doc]], last: int) -> None:
        """Push window after window, the next one read and sent while the one before is
        still answered (two in flight at most: the master writes one while the other
        crosses the wire). Each window's outcome, checkpoint included, is stored after the
        one before it, and not at all if that one failed (see :meth:`_run_push`).

        A document is never in two pushes at once: a window holding one still in flight
        (in the window ahead, or in a live push) waits for those and is read again, so its
        states and assumed states are current."""
        pk = self.context.collection.schema.primary_key
        ahead: asyncio.Future[None] | None = None
        flying: list[tuple[asyncio.Future[None], _Push | None]] = []  # at most two
        try:
            while True:  # ``pairs``: the window read from ``start``
                while not self._pushing.isdisjoint(state[pk] for _, state in pairs):
                    if ahead is not None:
                        await ahead
                    if not self._pushing.isdisjoint(state[pk] for _, state in pairs):
                        self._landed.clear()  # in a live push: wait until one ended
                        await self._landed.wait()
                    pairs, last = self._read(start)
                push = self._prepare([state for _, state in pairs], last)
                task = start_eagerly(self._run_push(push, after=ahead))  # sent in this turn
                flying.append((task, push))
                if ahead is not None:
                    await ahead
                    del flying[0]
                ahead = task
                start = last
                pairs, last = self._read(start)
                if not pairs and last == start:
                    break
            await ahead
        except BaseException:
            # nothing of a window is stored after one failed; none of them flies on
            await abandon([task for task, _ in flying])
            for _, push in flying:
                if push is not None and not push.running:  # cancelled before it began
                    self._pushing -= push.ids
            raise

    async def _live_push(self, since: int, until: int) -> None:
        """The live lane: push the documents written in ``(since, until]`` if they are at
        most :data:`LIVE_PUSH_MAX`, beside the bulk lane's batch (see the module docstring).
        A failure is reported; the bulk lane pushes those documents later."""
        try:
            async with self.context.arrivals.turns.push():
                await self._push_range(since, until)
        except Exception as exc:  # not fatal: nothing of it moved the checkpoint
            self.context.report("up", exc)
            self._local_change.set()

    async def _push_range(self, since: int, until: int) -> None:
        c = self.context.collection
        pk = c.schema.primary_key
        # what the pull wrote is left for the bulk lane's walk to pass over (see .pulled)
        skip = self.context.pulled.holds
        pairs, _ = c.database.storage.changes_since(c.name, since, LIVE_PUSH_MAX + 1, skip)
        self._note(pairs)
        states = [state for seq, state in pairs if seq <= until]
        if len(states) > LIVE_PUSH_MAX:
            return  # a bulk write: the bulk lane's
        # a document another push has in flight is left to the bulk lane, which reads its
        # newer state after that push (it never goes out in two pushes at once)
        states = [state for state in states if state[pk] not in self._pushing]
        if states:
            self.live_pushes += 1
            await self._push(states, None)

    async def _push(self, states: list[Doc], checkpoint: int | None) -> None:
        """Push the changed documents, resolve conflicts, store the outcome (lock held).
        ``checkpoint``: the up-checkpoint to store with it (``None``: the live lane's)."""
        await self._run_push(self._prepare(states, checkpoint))

    def _prepare(self, states: list[Doc], checkpoint: int | None) -> _Push | None:
        """The rows of a push of ``states``, its documents marked in flight (``None``: a
        live push with nothing to send)."""
        pk = self.context.collection.schema.primary_key
        revisions = {s[pk]: s["_rev"] for s in states}
        # this push's causal vectors (p2pdb.causal), by id: of the fork's states, and of
        # the master's conflict answers (per push: the two lanes may push at once)
        vectors = Vectors({s[pk]: state_vector(s) for s in states}, {})
        rows = self._rows(states)
        if not rows and checkpoint is None:
            return None  # a live push of documents that came down: nothing to send or store
        ids = {row.new_document_state[pk] for row in rows}
        self._pushing |= ids  # before any await: the other lane must see them
        return _Push(rows, ids, revisions, vectors, checkpoint)

    async def _run_push(
        self, push: _Push | None, after: asyncio.Future[None] | None = None
    ) -> None:
        """Send a prepared push, decide, store the outcome after ``after`` (the push whose
        outcome must be stored first; its failure is raised), and emit the events."""
        if push is None:
            return
        push.running = True
        pk = self.context.collection.schema.primary_key
        rows = push.rows
        try:
            real, unsent = await self._sender.send(rows, push.vectors)
            rows = [row for row in rows if row.new_document_state[pk] not in unsent]
            outcome = await self._decide(rows, real, push.revisions, push.checkpoint, push.vectors)
            if after is not None:
                await after
            await self._write(outcome)
        finally:
            self._pushing -= push.ids
            self._relayed.difference_update(push.revisions)
            self._landed.set()
        for row in rows:
            if row.new_document_state[pk] not in real:
                self.sent.on_next(row.new_document_state)
        for event in outcome.resolved:
            self.conflicts.on_next(event)

    def _rows(self, states: list[Doc]) -> list[WriteRow]:
        """A row for every state that differs from its assumed master state.

        With a selector, a state that does not match is pushed only when the master shares
        the document (there is an assumed master state): an edit taking a document out of
        the selector still reaches the master; a document it never had stays local.
        """
        c = self.context.collection
        pk = c.schema.primary_key
        is_equal = c.conflict_handler.is_equal
        selected = self.context.filter.matches
        assumed = self.context.checkpoints.assumed(s[pk] for s in states)
        rows: list[WriteRow] = []
        for state in states:
            # in place (the states are this pass's own copies): the wire form, as to_wire
            state.pop("_rev", None)
            state.pop("_meta", None)
            state.pop("_attachments", None)
            wire = state
            known = assumed.get(state[pk])
            if known is None and not selected(wire):
                continue
            if known is None or not is_equal(known, wire):
                rows.append(WriteRow(wire, known))
        return rows

    def _note(self, pairs: list[tuple[int, Doc]]) -> None:
        """Remember which of these states are relayed copies (asked before pushed)."""
        c = self.context.collection
        self._relayed |= relayed_ids(pairs, c.database.storage.token, c.schema.primary_key)

    async def _decide(
        self,
        rows: list[WriteRow],
        real: dict[str, Doc],
        revisions: dict[str, str],
        up: int | None,
        vectors: Vectors,
    ) -> _Outcome:
        """New assumed states and the resolutions of the conflicts the master reported."""
        is_equal = self.context.collection.conflict_handler.is_equal
        pk = self.context.collection.schema.primary_key
        outcome = _Outcome(self.context.checkpoints.update())
        if up is not None:
            outcome.update.set_checkpoint("up", up)
        for row in rows:
            doc_id = row.new_document_state[pk]
            master = real.get(doc_id)
            if master is None:
                outcome.update.set_assumed(doc_id, row.new_document_state)
                continue
            outcome.update.set_assumed(doc_id, master)
            if is_equal(master, row.new_document_state):
                continue  # both sides wrote the same state: nothing to resolve
            ours, theirs = vectors.ours.get(doc_id), vectors.theirs.get(doc_id)
            if stale(ours, theirs):  # the master's state descends from ours: take it as is
                user, deleted = from_wire(master)
                copy = Write(user, deleted, revisions[doc_id], theirs, new_event=False)
                outcome.resolutions.append(copy)
                continue
            conflict = Conflict(row.new_document_state, row.assumed_master_state, master)
            chosen = await self._resolve(conflict)
            outcome.resolved.append(ResolvedConflict(conflict, chosen))
            user, deleted = from_wire(chosen)
            # a new state here, after both sides' (the fork's row already holds ours)
            outcome.resolutions.append(Write(user, deleted, revisions[doc_id], theirs))
        return outcome

    async def _write(self, outcome: _Outcome) -> None:
        """Write the resolutions and, in the same transaction, the state that covers them."""
        c = self.context.collection
        pk = c.schema.primary_key
        resolutions, update = outcome.resolutions, outcome.update
        origin = self.context.origin

        def persist(txn: WriteTxn) -> None:
            results = txn.put(c.name, resolutions, origin)
            for write, result in zip(resolutions, results, strict=True):
                if isinstance(result, ConflictError):
                    # A local write came after the one we pushed. Keep the old assumed
                    # state, so that write is pushed against it and conflicts (and is
                    # resolved) again, instead of silently overwriting the master's state.
                    update.keep_assumed(write.document[pk])
            update.write(txn)

        small = len(resolutions) + update.rows <= SMALL_WRITE_ROWS
        await write_to_the_end(c.database.storage, persist, small=small)  # never orphaned

    async def _resolve(self, conflict: Conflict) -> Doc:
        """The handler's resolution in wire form; on failure, report and keep the master's."""
        c = self.context.collection
        try:
            chosen = await resolve_conflict(c.conflict_handler, conflict)
            user, _ = from_wire(chosen)
            c.prepare(user)
            if user.get(c.schema.primary_key) != conflict.real_master_state[c.schema.primary_key]:
                raise ValidationError(
                    "The conflict handler changed the primary key.",
                    code="REPLICATION_BAD_RESOLUTION",
                )
            return to_wire(chosen)
        except Exception as exc:
            error = ReplicationError(
                f"The conflict handler of {c.name!r} failed: {exc!r}. The master's state was "
                "kept; fix the handler.",
                code="REPLICATION_CONFLICT_HANDLER",
            )
            error.__cause__ = exc
            self.context.report("up", error)
            return conflict.real_master_state
