"""The fork side: ``replicate(collection, handler)`` keeps a collection in sync with a master.

Downstream pulls with checkpoint iteration, then applies the master's live stream (a
``RESYNC`` or a restart goes back to iteration). Upstream walks the collection's own change
sequence from its checkpoint and pushes every document whose state differs from the master
state it last saw (the "assumed master state"), so documents that just came down are never
sent back. Conflicts the master reports are resolved here by the collection's conflict
handler, written locally and pushed again.

The checkpoints and assumed master states live in the fork's SQLite file and are written in
the same transaction as the documents they cover: a crash never skips or repeats a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from reactivex import Observable
from reactivex.abc import DisposableBase
from reactivex.subject import BehaviorSubject

from ..backoff import Backoff
from ..changes import ChangeEvent
from ..conflicts import Conflict, resolve_conflict
from ..errors import ConflictError, P2PDBError, ReplicationError, ValidationError
from ..storage import ABSENT, Write, WriteTxn
from ..streams import EventStream
from .protocol import (
    RESYNC,
    ChangesBatch,
    ReplicationHandler,
    Resync,
    WriteRow,
    as_changes_batch,
    from_wire,
    to_wire,
)

if TYPE_CHECKING:
    from ..collection import Collection

__all__ = ["ReplicationState", "ResolvedConflict", "replicate"]

Doc = dict[str, Any]
log = logging.getLogger("p2pdb.replication")


class ResolvedConflict:
    """A conflict the handler resolved: its input and the state it chose."""

    __slots__ = ("conflict", "resolved")

    def __init__(self, conflict: Conflict, resolved: Doc) -> None:
        self.conflict = conflict
        self.resolved = resolved

    def __repr__(self) -> str:
        return f"<ResolvedConflict {self.resolved!r}>"


class ReplicationState:
    """A running replication of one collection with one master. See :func:`replicate`."""

    def __init__(
        self,
        collection: Collection,
        handler: ReplicationHandler,
        replication_id: str,
        *,
        pull: bool = True,
        push: bool = True,
        live: bool = True,
        batch_size: int = 100,
        retry_delay: float = 0.5,
        max_retry_delay: float = 15.0,
    ) -> None:
        if not replication_id or not isinstance(replication_id, str):
            raise ValidationError(
                "replicate() needs a non-empty replication_id string: it keys the stored "
                "checkpoints, so a restart with the same id resumes.",
                code="REPLICATION_ID",
            )
        if type(batch_size) is not int or batch_size < 1:
            raise ValidationError(
                f"batch_size must be a positive integer, got {batch_size!r}.",
                code="REPLICATION_BAD_BATCH_SIZE",
            )
        self.collection = collection
        self.handler = handler
        self.replication_id = replication_id
        self.pull, self.push, self.live = pull, push, live
        self.batch_size = batch_size
        self._backoff = {d: Backoff(retry_delay, max_retry_delay) for d in ("up", "down")}
        #: Key of this replication's rows in the meta table, and the ``origin`` of its writes.
        self.key = f"{collection.name}:{replication_id}"

        self.errors: EventStream[P2PDBError] = EventStream()
        self.received: EventStream[Doc] = EventStream()
        self.sent: EventStream[Doc] = EventStream()
        self.conflicts: EventStream[ResolvedConflict] = EventStream()
        self._active: BehaviorSubject[bool] = BehaviorSubject(False)

        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[DisposableBase] = []
        self._queue: asyncio.Queue[tuple[int, ChangesBatch | Resync]] = asyncio.Queue()
        # Everything that reaches us from the master gets an arrival number. The master
        # sends stream events and answers in order (an ordered channel does), so:
        # - a stream event that arrived before the answer of a pull is covered by the
        #   pull's result (the master read its state after sending the event);
        # - a master state that arrived before the answer to a push of the same document
        #   may predate that push (or not: the master may have served it after applying
        #   the push). It is not applied, and the checkpoint does not move past it: the
        #   batch is pulled again, now after the push's answer.
        # Applying such stale states would roll the fork back, and in a mesh another
        # replication would then push the rolled-back state on as a new write; skipping
        # them for good would lose the newer ones.
        self._arrivals = itertools.count()
        self._last_pull_end = -1
        self._pushed_at: dict[str, int] = {}
        self._pushed_state: dict[str, Doc] = {}  # what that push sent
        # Stream events are applied only after a full pull since the last (re)start or
        # failure; before that a RESYNC is queued that covers them.
        self._caught_up = False
        self._local_change = asyncio.Event()
        # Held while one direction reads and updates documents and assumed master states:
        # a push in flight and a pull must never interleave, or a state read by one side
        # could be overwritten with a stale decision of the other.
        self._persist_lock = asyncio.Lock()
        self._busy = {"up": False, "down": False}
        self._failing = {"up": False, "down": False}
        self._first_done = {"up": not push, "down": not pull}
        self._state_changed = asyncio.Event()
        self._canceled = False
        self._paused = True

    # -- public API ------------------------------------------------------------------------

    @property
    def active(self) -> Observable[bool]:
        """True while pulling or pushing, False when idle."""
        return self._active

    @property
    def canceled(self) -> bool:
        """True after :meth:`cancel`."""
        return self._canceled

    @property
    def paused(self) -> bool:
        """True while paused (or not started)."""
        return self._paused

    async def start(self) -> None:
        """Start (or resume after :meth:`pause`): checkpoint iteration, then live."""
        self._start()

    def _start(self) -> None:
        if self._canceled:
            raise ReplicationError(
                "This replication was canceled; call replicate() again with the same "
                "replication_id to resume from its checkpoints.",
                code="REPLICATION_CANCELED",
            )
        if not self._paused:
            return
        self._paused = False
        self._caught_up = False
        self._queue = asyncio.Queue()
        self._queue.put_nowait((next(self._arrivals), RESYNC))
        if self.live:
            if self.pull:
                self._subscriptions.append(
                    self.handler.stream().subscribe(
                        on_next=self._on_stream, on_error=self._on_stream_error
                    )
                )
            if self.push:
                self._subscriptions.append(
                    self.collection.batches.subscribe(on_next=self._on_local_batch)
                )
        loop = asyncio.get_running_loop()
        if self.pull:
            self._tasks.append(loop.create_task(self._run("down")))
        if self.push:
            self._tasks.append(loop.create_task(self._run("up")))

    async def pause(self) -> None:
        """Stop pulling and pushing until :meth:`start`; nothing is lost meanwhile."""
        self._paused = True
        for subscription in self._subscriptions:
            subscription.dispose()
        self._subscriptions.clear()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._busy = {"up": False, "down": False}
        self._changed()

    async def re_sync(self) -> None:
        """Pull everything after the stored checkpoint again (as after a reconnect)."""
        self._queue.put_nowait((next(self._arrivals), RESYNC))

    async def cancel(self) -> None:
        """Stop for good; the checkpoints stay, so a new ``replicate()`` resumes."""
        if self._canceled:
            return
        await self.pause()
        self._canceled = True
        self._changed()
        for stream in (self.errors, self.received, self.sent, self.conflicts):
            stream.on_completed()
        self._active.on_next(False)
        self._active.on_completed()

    async def wait_for_initial_replication(self) -> None:
        """Return once both directions finished their first full pass."""
        await self._wait_until(lambda: all(self._first_done.values()))

    async def wait_for_in_sync(self) -> None:
        """Return when nothing is left to pull or push right now (never while failing)."""
        await self._wait_until(self.is_in_sync)

    async def __aenter__(self) -> ReplicationState:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()

    # -- bookkeeping -----------------------------------------------------------------------

    def is_in_sync(self) -> bool:
        """True when nothing is left to pull or push right now (see wait_for_in_sync)."""
        return (
            not self._paused
            and all(self._first_done.values())
            and not any(self._busy.values())
            and not any(self._failing.values())
            and (not self.pull or self._queue.empty())
            and (not self.push or not self._local_change.is_set())
        )

    async def _wait_until(self, condition: Any) -> None:
        while self._canceled or not condition():
            if self._canceled:
                raise ReplicationError(
                    "The replication was canceled before it got there.",
                    code="REPLICATION_CANCELED",
                )
            self._state_changed.clear()
            await self._state_changed.wait()

    def _changed(self) -> None:
        self._state_changed.set()
        active = any(self._busy.values())
        if self._active.value != active and not self._canceled:
            self._active.on_next(active)

    def _set_busy(self, direction: str, busy: bool) -> None:
        self._busy[direction] = busy
        self._changed()

    def _on_stream(self, item: ChangesBatch | Resync) -> None:
        self._queue.put_nowait((next(self._arrivals), item))
        self._changed()

    def _on_stream_error(self, error: Exception) -> None:
        """The master's stream broke: report, then listen again and resync."""
        self._report("down", error)
        if self._paused:
            return
        self._subscriptions.append(
            self.handler.stream().subscribe(on_next=self._on_stream, on_error=self._on_stream_error)
        )
        self._queue.put_nowait((next(self._arrivals), RESYNC))

    def _on_local_batch(self, events: list[ChangeEvent]) -> None:
        self._local_change.set()
        self._changed()

    def _report(self, direction: str, error: BaseException) -> None:
        if isinstance(error, P2PDBError):
            wrapped = error
        else:
            wrapped = ReplicationError(
                f"{'Pulling' if direction == 'down' else 'Pushing'} failed: {error!r}. It is "
                "retried with backoff.",
                code="REPLICATION_PULL" if direction == "down" else "REPLICATION_PUSH",
                direction=direction,
            )
            wrapped.__cause__ = error
        log.warning("replication %s (%s): %s", self.key, direction, wrapped)
        self.errors.on_next(wrapped)

    async def _run(self, direction: str) -> None:
        """Run one direction; on failure report, back off, and start it over."""
        body = self._downstream if direction == "down" else self._upstream
        while True:
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failing[direction] = True
                if direction == "down":
                    self._caught_up = False  # events queued now may follow a gap
                self._set_busy(direction, False)
                self._report(direction, exc)
                await asyncio.sleep(self._backoff[direction].next_delay())
                if direction == "down":
                    self._queue.put_nowait((next(self._arrivals), RESYNC))
                else:
                    self._local_change.set()

    def _succeeded(self, direction: str) -> None:
        self._backoff[direction].reset()
        if self._failing[direction]:
            self._failing[direction] = False
            self._changed()

    # -- downstream ------------------------------------------------------------------------

    async def _downstream(self) -> None:
        while True:
            arrival, item = await self._queue.get()
            if item == RESYNC:
                await self._pull_all()
            elif (
                isinstance(item, ChangesBatch)
                and self._caught_up
                and arrival > self._last_pull_end
            ):
                self._set_busy("down", True)
                if not await self._persist_from_master(item.documents, item.checkpoint, arrival):
                    self._queue.put_nowait((next(self._arrivals), RESYNC))
                self._succeeded("down")
            self._set_busy("down", False)
            if not self.live and self._first_done["down"]:
                return

    async def _pull_all(self) -> None:
        self._set_busy("down", True)
        storage = self.collection.database.storage
        checkpoint = storage.get_meta(self.key, ["down"]).get("down")
        while True:
            answer = await self.handler.changes_since(checkpoint, self.batch_size)
            self._last_pull_end = arrival = next(self._arrivals)
            batch = as_changes_batch(answer)
            complete = await self._persist_from_master(
                batch.documents, batch.checkpoint, arrival
            )
            self._succeeded("down")
            if not complete:
                continue  # pull the same batch again, after the push that made it doubtful
            checkpoint = batch.checkpoint
            if len(batch.documents) < self.batch_size:
                break
        self._caught_up = True
        self._first_done["down"] = True
        self._set_busy("down", False)

    async def _persist_from_master(
        self, documents: Sequence[object], checkpoint: Any, arrival: int
    ) -> bool:
        """Apply master states; False if some were doubtful and the checkpoint was kept."""
        async with self._persist_lock:
            complete = await self._persist_from_master_locked(documents, checkpoint, arrival)
            if len(self._pushed_at) > 1000:  # later arrivals are never older than this one
                self._pushed_at = {k: v for k, v in self._pushed_at.items() if v > arrival}
                self._pushed_state = {
                    k: v for k, v in self._pushed_state.items() if k in self._pushed_at
                }
            return complete

    async def _persist_from_master_locked(
        self, documents: Sequence[object], checkpoint: Any, arrival: int
    ) -> bool:
        c = self.collection
        pk = c.schema.primary_key
        is_equal = c.conflict_handler.is_equal
        incoming: dict[str, tuple[Doc, bool, Doc]] = {}
        complete = True
        for doc in documents:
            try:
                user, deleted = from_wire(doc)
                prepared = c.prepare(user)
            except ValidationError as exc:
                doc_id = doc.get(pk) if isinstance(doc, Mapping) else None
                exc.parameters.setdefault("document_id", doc_id)
                self._report("down", exc)  # not stored; the others go on
                continue
            if self._pushed_at.get(prepared[pk], -1) > arrival:
                # sent before our push of it was answered (see __init__): the echo of that
                # push (RxDB masters echo every push) is harmless; anything else is doubtful
                wire = to_wire({**prepared, "_deleted": deleted})
                pushed = self._pushed_state.get(prepared[pk])
                if pushed is None or not is_equal(pushed, wire):
                    complete = False
                continue
            incoming[prepared[pk]] = (prepared, deleted, to_wire({**prepared, "_deleted": deleted}))
        storage = c.database.storage
        forks = storage.get(c.name, list(incoming))
        assumed = storage.get_meta(self.key, [f"doc:{i}" for i in incoming])
        writes: list[Write] = []
        meta: dict[str, Any] = {}
        for doc_id, (user, deleted, master) in incoming.items():
            fork = forks.get(doc_id)
            fork_wire = to_wire(fork) if fork is not None else None
            known = assumed.get(f"doc:{doc_id}")
            if fork_wire is not None and is_equal(fork_wire, master):
                if known is None or not is_equal(known, master):
                    meta[f"doc:{doc_id}"] = master
                continue
            if fork_wire is not None and (known is None or not is_equal(known, fork_wire)):
                continue  # unpushed local changes: upstream pushes them and resolves
            writes.append(Write(user, deleted, expected=fork["_rev"] if fork else ABSENT))
            meta[f"doc:{doc_id}"] = master
        if complete:
            meta["down"] = checkpoint

        def persist(txn: WriteTxn) -> list[Doc]:
            written: list[Doc] = []
            if writes:
                for write, outcome in zip(writes, txn.put(c.name, writes, self.key), strict=True):
                    if isinstance(outcome, ConflictError):  # a local write got in first
                        del meta[f"doc:{write.document[pk]}"]
                    else:
                        written.append(outcome)
            txn.set_meta(self.key, meta)
            return written

        for state in await storage.write(persist):
            self.received.on_next(state)
        return complete

    # -- upstream --------------------------------------------------------------------------

    async def _upstream(self) -> None:
        while True:
            self._local_change.clear()
            self._set_busy("up", True)
            await self._push_all()
            self._first_done["up"] = True
            self._set_busy("up", False)
            if not self.live:
                return
            await self._local_change.wait()

    async def _push_all(self) -> None:
        storage = self.collection.database.storage
        while True:
            checkpoint = storage.get_meta(self.key, ["up"]).get("up", 0)
            pairs, last = storage.changes_since(self.collection.name, checkpoint, self.batch_size)
            if not pairs:
                return
            await self._persist_to_master([state for _, state in pairs], last)
            self._succeeded("up")

    async def _persist_to_master(self, states: list[Doc], checkpoint: int) -> None:
        async with self._persist_lock:
            await self._persist_to_master_locked(states, checkpoint)

    async def _persist_to_master_locked(self, changed: list[Doc], checkpoint: int) -> None:
        c = self.collection
        pk = c.schema.primary_key
        is_equal = c.conflict_handler.is_equal
        storage = c.database.storage
        # the current states, not the ones listed: a pull may have written since
        states = list(storage.get(c.name, [s[pk] for s in changed]).values())
        assumed = storage.get_meta(self.key, [f"doc:{s[pk]}" for s in states])
        revisions = {s[pk]: s["_rev"] for s in states}
        rows: list[WriteRow] = []
        for state in states:
            wire = to_wire(state)
            known = assumed.get(f"doc:{state[pk]}")
            if known is None or not is_equal(known, wire):
                rows.append(WriteRow(wire, known))
        real: dict[str, Doc] = {}
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            answer = await self.handler.write(chunk)
            answered_at = next(self._arrivals)
            for row in chunk:
                self._pushed_at[row.new_document_state[pk]] = answered_at
                self._pushed_state[row.new_document_state[pk]] = row.new_document_state
            if not isinstance(answer, list):
                raise ReplicationError(
                    "write() must return a list of conflicting documents.",
                    code="REPLICATION_BAD_RESPONSE",
                )
            sent_ids = {row.new_document_state[pk] for row in chunk}
            for answered in answer:
                if not isinstance(answered, Mapping) or answered.get(pk) not in sent_ids:
                    raise ReplicationError(
                        "write() returned a conflict for a document that was not sent.",
                        code="REPLICATION_BAD_RESPONSE",
                    )
                real[answered[pk]] = to_wire(answered)
        meta: dict[str, Any] = {"up": checkpoint}
        resolutions: list[Write] = []
        resolved_events: list[ResolvedConflict] = []
        for row in rows:
            doc_id = row.new_document_state[pk]
            master = real.get(doc_id)
            if master is None:
                meta[f"doc:{doc_id}"] = row.new_document_state
                continue
            meta[f"doc:{doc_id}"] = master
            if is_equal(master, row.new_document_state):
                continue  # both sides wrote the same state: nothing to resolve
            conflict = Conflict(row.new_document_state, row.assumed_master_state, master)
            chosen = await self._resolve(conflict)
            resolved_events.append(ResolvedConflict(conflict, chosen))
            user, deleted = from_wire(chosen)
            resolutions.append(Write(user, deleted, expected=revisions[doc_id]))

        def persist(txn: WriteTxn) -> None:
            for write, outcome in zip(
                resolutions, txn.put(c.name, resolutions, self.key), strict=True
            ):
                if isinstance(outcome, ConflictError):
                    # A local write came after the one we pushed. Keep the old assumed
                    # state, so that write is pushed against it and conflicts (and is
                    # resolved) again, instead of silently overwriting the master's state.
                    del meta[f"doc:{write.document[pk]}"]
            txn.set_meta(self.key, meta)

        await storage.write(persist)
        for row in rows:
            if row.new_document_state[pk] not in real:
                self.sent.on_next(row.new_document_state)
        for event in resolved_events:
            self.conflicts.on_next(event)

    async def _resolve(self, conflict: Conflict) -> Doc:
        c = self.collection
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
            self._report("up", error)
            return conflict.real_master_state


def replicate(
    collection: Collection,
    handler: ReplicationHandler,
    replication_id: str,
    *,
    pull: bool = True,
    push: bool = True,
    live: bool = True,
    batch_size: int = 100,
    retry_delay: float = 0.5,
    max_retry_delay: float = 15.0,
    autostart: bool = True,
) -> ReplicationState:
    """Replicate ``collection`` (the fork) with the master behind ``handler``.

    The same ``replication_id`` resumes from the stored checkpoints. ``live=False`` stops
    after one full pass each way. Failures appear on ``state.errors`` and are retried with
    capped exponential backoff (``retry_delay`` doubling up to ``max_retry_delay``, with
    jitter). Use ``async with replicate(...) as state:`` to cancel on exit.
    """
    state = ReplicationState(
        collection,
        handler,
        replication_id,
        pull=pull,
        push=push,
        live=live,
        batch_size=batch_size,
        retry_delay=retry_delay,
        max_retry_delay=max_retry_delay,
    )
    if autostart:
        state._start()
    return state
