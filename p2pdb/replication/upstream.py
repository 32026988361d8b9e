"""Upstream: push the fork's changes to the master and resolve the conflicts it reports.

Walks the collection's own change sequence from the stored up-checkpoint and pushes every
document whose current state differs from its assumed master state, so documents that just
came down are never sent back. A conflict is resolved by the collection's conflict handler,
written locally, and pushed again by the next pass.

Two lanes. The **bulk lane** walks the sequence in passes of up to :data:`WINDOW` batches,
sent at once (as RxDB sends all of a local write's batches: one round trip per batch
would bound the rate by the master's latency), and is the only one that moves the
up-checkpoint, after every batch of a pass was acknowledged. While it is busy, a local commit of at
most :data:`LIVE_PUSH_MAX` documents is pushed at once by the **live lane**, beside the
batch in flight: it stores the assumed master states of what the master acknowledged, never
the checkpoint (the bulk lane finds those documents equal to their assumed states and sends
nothing when it walks past them). A document is never in two pushes at once: the live lane
leaves one the bulk lane (or another live push) has in flight to the bulk lane, which reads
its newer state later; and the bulk lane reads its next batch only once no live push is in
flight. Both lanes hold the pull out (the persist lock): a live push runs under the lock
the bulk lane holds for its batch, or takes it itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..causal import Vector, attach, state_vector, take
from ..conflicts import Conflict, ResolvedConflict, resolve_conflict
from ..errors import ConflictError, P2PDBError, ReplicationError, ValidationError
from ..storage import Write, WriteTxn
from ..streams import EventStream
from ..tasks import cancel_and_wait, run_all, settle_unless_cancelling
from .access import apply_modifier, outgoing_rows, refused_ids
from .causal_order import speaks_causal, stale
from .checkpoints import Direction, StateUpdate, write_to_the_end
from .direction import DirectionTask, ReplicationContext
from .protocol import WriteRow, from_wire, to_wire
from .revs import push_missing, relayed_ids, speaks_revs

__all__ = ["LIVE_PUSH_MAX", "ResolvedConflict", "Upstream"]

Doc = dict[str, Any]
#: Most documents of a local commit that the live lane pushes beside a bulk push.
LIVE_PUSH_MAX = 16
#: Batches the bulk lane reads per pass and sends at once (see the module docstring).
WINDOW = 8
_ASK_AGAIN = 3  # times a doubtful conflict answer is asked again before it is resolved


@dataclass(slots=True)
class _Outcome:
    """What one push decided: stored state, local resolutions, events to emit after."""

    update: StateUpdate
    resolutions: list[Write] = field(default_factory=list)
    resolved: list[ResolvedConflict] = field(default_factory=list)


@dataclass(slots=True)
class _Vectors:
    """One push's causal vectors by id: the fork's states and the master's answers."""

    ours: dict[str, Vector | None]
    theirs: dict[str, Vector | None]


def _bad_response(message: str) -> ReplicationError:
    return ReplicationError(message, code="REPLICATION_BAD_RESPONSE")


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
        self._holding = False  # the bulk lane holds the persist lock around its batch
        self._live: set[asyncio.Task[None]] = set()  # live pushes (owned by run())
        self._hosted: set[asyncio.Task[None]] = set()  # those running under the bulk's lock
        #: Live pushes started so far (each a commit of at most LIVE_PUSH_MAX documents).
        self.live_pushes = 0
        self._relayed: set[str] = set()  # relayed states to push: asked first (revs.py)

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
                self.first_done = True
                self.set_busy(False)
                if not self.context.options.live:
                    return
                await self._local_change.wait()
        finally:
            self._noticed = None
            await cancel_and_wait(self._live)  # never loses a cancellation of ours (p2pdb.tasks)

    async def _push_all(self) -> None:
        c = self.context.collection
        while True:
            # never interleaved with a pull's read-decide-write (see Arrivals.persist_lock)
            # read under the lock, the listed states are current: no pull writes meanwhile
            async with self.context.arrivals.persist_lock:
                pairs, last = c.database.storage.changes_since(
                    c.name, self.context.checkpoints.up(), self.context.options.batch_size * WINDOW
                )
                if not pairs:
                    return
                self._note(pairs)
                self._holding = True  # live pushes may run beside this batch
                try:
                    await self._push([state for _, state in pairs], last)
                finally:
                    self._holding = False
                    await settle_unless_cancelling(self._hosted)  # before the lock goes
            self.succeeded()

    async def _live_push(self, since: int, until: int) -> None:
        """The live lane: push the documents written in ``(since, until]`` if they are at
        most :data:`LIVE_PUSH_MAX`, beside the bulk lane's batch (see the module docstring).
        A failure is reported; the bulk lane pushes those documents later."""
        task = asyncio.current_task()
        assert task is not None
        try:
            if self._holding:
                self._hosted.add(task)  # the bulk lane waits for us before releasing its lock
                await self._push_range(since, until)
            else:
                async with self.context.arrivals.persist_lock:
                    await self._push_range(since, until)
        except Exception as exc:  # not fatal: nothing of it moved the checkpoint
            self.context.report("up", exc)
            self._local_change.set()
        finally:
            self._hosted.discard(task)

    async def _push_range(self, since: int, until: int) -> None:
        c = self.context.collection
        pk = c.schema.primary_key
        pairs, _ = c.database.storage.changes_since(c.name, since, LIVE_PUSH_MAX + 1)
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
        pk = self.context.collection.schema.primary_key
        revisions = {s[pk]: s["_rev"] for s in states}
        # this push's causal vectors (p2pdb.causal), by id: of the fork's states, and of
        # the master's conflict answers (per push: the two lanes may push at once)
        vectors = _Vectors({s[pk]: state_vector(s) for s in states}, {})
        rows = self._rows(states)
        if not rows and checkpoint is None:
            return  # a live push of documents that came down: nothing to send or store
        ids = {row.new_document_state[pk] for row in rows}
        self._pushing |= ids  # before any await: the other lane must see them
        try:
            real, unsent = await self._send(rows, vectors)
            rows = [row for row in rows if row.new_document_state[pk] not in unsent]
            outcome = await self._decide(rows, real, revisions, checkpoint, vectors)
            await self._write(outcome)
        finally:
            self._pushing -= ids
            self._relayed.difference_update(revisions)
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

    async def _send(
        self, rows: list[WriteRow], vectors: _Vectors
    ) -> tuple[dict[str, Doc], set[str]]:
        """Send the rows in batches: the master's real states of the conflicting ones (in
        the fork's form, through ``pull_modifier``), and the ids of rows left unsent
        (``push_modifier`` dropped them) or whose conflict state ``pull_modifier`` dropped:
        their assumed master states stay as they were."""
        size, real, unsent = self.context.options.batch_size, dict[str, Doc](), set[str]()
        # every batch at once, as RxDB sends them (their ids are disjoint)
        await run_all(
            self._send_batch(rows[at : at + size], vectors, unsent, real)
            for at in range(0, len(rows), size)
        )
        return real, unsent

    async def _send_batch(
        self, rows: list[WriteRow], vectors: _Vectors, unsent: set[str], real: dict[str, Doc]
    ) -> None:
        pk = self.context.collection.schema.primary_key
        chunk, wire = await outgoing_rows(self.context.options.push_modifier, rows, pk, unsent)
        if speaks_causal(self.context.handler):  # p2pdb on both ends: vectors travel
            wire = [
                WriteRow(
                    attach(r.new_document_state, vectors.ours.get(r.new_document_state[pk])),
                    r.assumed_master_state,
                )
                for r in wire
            ]
        for _ in range(_ASK_AGAIN + 1):
            doubtful = await self._send_chunk(chunk, wire, unsent, real, vectors)
            if not doubtful:
                break
            # ask again for those only: the answer is read after that state arrived
            chunk = [r for r in chunk if r.new_document_state[pk] in doubtful]
            wire = [r for r in wire if r.new_document_state[pk] in doubtful]

    async def _send_chunk(
        self,
        chunk: list[WriteRow],
        wire: list[WriteRow],
        unsent: set[str],
        real: dict[str, Doc],
        vectors: _Vectors,
    ) -> set[str]:
        """Send one batch; put its conflict answers in ``real``. Returns the ids whose
        answer may be older than a master state that arrived while the push was in flight
        (see :class:`~.arrivals.Arrivals`): to ask again rather than resolve."""
        pk, arrivals = self.context.collection.schema.primary_key, self.context.arrivals
        ids = [row.new_document_state[pk] for row in wire]
        if not ids:
            return set()
        arrivals.flying(ids)
        try:
            answer = await self._write_allowed(chunk, wire, unsent)
        finally:
            seen = arrivals.landed(ids)
        if answer is None:
            return set()
        sent = {row.new_document_state[pk]: row.new_document_state for row in chunk}
        arrivals.push_answered(sent.items())
        for doc_id in sent:  # an earlier answer of a row asked again is replaced
            real.pop(doc_id, None)
        if not isinstance(answer, list):
            raise _bad_response("write() must return a list of conflicting documents.")
        for answered in answer:
            if not isinstance(answered, Mapping) or answered.get(pk) not in sent:
                raise _bad_response("write() returned a conflict for a document that was not sent.")
            doc_id = answered[pk]
            answered, vectors.theirs[doc_id] = self._take_vector(answered)
            state = await apply_modifier(self.context.options.pull_modifier, dict(answered))
            if state is None:
                unsent.add(doc_id)
            else:
                real[doc_id] = to_wire(state)
        is_equal = self.context.collection.conflict_handler.is_equal
        return {i for i in seen & real.keys() if not is_equal(real[i], sent[i])}

    def _take_vector(self, answered: Mapping[str, Any]) -> tuple[Doc, Vector | None]:
        """A conflict answer without its vector, and the vector (a bad one: a bad answer)."""
        if not speaks_causal(self.context.handler):
            return dict(answered), None
        try:
            return take(answered)
        except ValidationError as exc:
            raise _bad_response(f"write() returned a bad causal vector: {exc.message}") from exc

    async def _write_allowed(
        self, chunk: list[WriteRow], wire: list[WriteRow], unsent: set[str]
    ) -> list[Any] | None:
        """``handler.write(wire)``; when the master refuses some rows
        (``REPLICATION_WRITE_REFUSED``: its access rules), report it once, leave those rows
        unsent (nothing of them is stored there) and send the others again, so one refused
        row never blocks the rest. ``None``: every row was refused."""
        pk = self.context.collection.schema.primary_key
        while True:
            try:
                rest = await self._unheld(wire)
                return await self.context.handler.write(rest) if rest else []
            except P2PDBError as exc:
                sent = {row.new_document_state[pk] for row in wire}
                refused = refused_ids(exc) & sent
                if not refused:
                    raise
                self.context.report("up", exc)
                unsent |= refused
                chunk[:] = [r for r in chunk if r.new_document_state[pk] not in refused]
                wire[:] = [r for r in wire if r.new_document_state[pk] not in refused]
                if not wire:
                    return None

    def _note(self, pairs: list[tuple[int, Doc]]) -> None:
        """Remember which of these states are relayed copies (asked before pushed)."""
        c = self.context.collection
        self._relayed |= relayed_ids(pairs, c.database.storage.token, c.schema.primary_key)

    async def _unheld(self, wire: list[WriteRow]) -> list[WriteRow]:
        """``wire`` without the relayed states the master holds exactly (revs.py)."""
        handler, pk = self.context.handler, self.context.collection.schema.primary_key
        if not speaks_revs(handler) or self.context.options.push_modifier is not None:
            return wire
        return await push_missing(handler, wire, self._relayed, pk)

    async def _decide(
        self,
        rows: list[WriteRow],
        real: dict[str, Doc],
        revisions: dict[str, str],
        up: int | None,
        vectors: _Vectors,
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

        await write_to_the_end(c.database.storage, persist)  # see there: never orphaned

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
