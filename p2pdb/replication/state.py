"""The fork side: ``replicate(collection, handler)`` keeps a collection in sync with a master.

Downstream pulls with checkpoint iteration, then applies the master's live stream (a
``RESYNC`` or a restart goes back to iteration). Upstream walks the collection's own change
sequence from its checkpoint and pushes every document whose state differs from the master
state it last saw (the "assumed master state"), so documents that just came down are never
sent back. Conflicts the master reports are resolved here by the collection's conflict
handler, written locally and pushed again.

The checkpoints and assumed master states live in the fork's SQLite file and are written in
the same transaction as the documents they cover: a crash never skips or repeats a change.

This module holds the lifecycle and the public API; the parts are ``downstream``,
``upstream``, ``checkpoints`` (the stored state), ``arrivals`` (the stale-state rule and the
turns) and ``options``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Unpack

from reactivex import Observable
from reactivex.abc import DisposableBase
from reactivex.subject import BehaviorSubject

from ..changes import ChangeEvent
from ..errors import P2PDBError, ReplicationError
from ..streams import EventStream
from ..tasks import cancel_and_wait
from .access import DocumentFilter
from .arrivals import Arrivals
from .causal_order import negotiate
from .checkpoints import Checkpoints, Direction
from .direction import DirectionTask, ReplicationContext
from .downstream import Downstream
from .fork import ForkCollection
from .options import ReplicationOptions, ReplicationOptionsChanges, merge_options
from .protocol import RESYNC, ChangesBatch, ReplicationHandler, Resync
from .upstream import ResolvedConflict, Upstream

__all__ = ["ReplicationState", "ResolvedConflict", "replicate"]

Doc = dict[str, Any]
#: The replication that started last, per collection (by id) and replication id.
_LATEST: weakref.WeakValueDictionary[tuple[int, str], ReplicationState] = (
    weakref.WeakValueDictionary()
)
log = logging.getLogger("p2pdb.replication.state")
#: Seconds after a commit of the pull's own before the push walks past its rows.
PULLED_WALK_DELAY = 1.0


class ReplicationState:
    """A replication of one collection with one master. See :func:`replicate`.

    ``options`` (default ``ReplicationOptions()``) with the keyword ``changes`` applied, e.g.
    ``ReplicationState(todos, handler, "main", live=False)``. Constructing starts nothing:
    call :meth:`start` (or :meth:`start_nowait`), or use ``replicate()``.
    """

    def __init__(
        self,
        collection: ForkCollection,
        handler: ReplicationHandler,
        replication_id: str,
        options: ReplicationOptions | None = None,
        **changes: Unpack[ReplicationOptionsChanges],
    ) -> None:
        checkpoints = Checkpoints(collection.database.storage, collection.name, replication_id)
        #: The options this replication runs with.
        self.options = merge_options(options, changes)
        self.collection = collection
        # with vectors when the master can carry them (p2pdb on both ends; causal_order.py)
        handler = negotiate(handler)
        self.handler = handler
        self.replication_id = replication_id
        self.pull, self.push, self.live = self.options.pull, self.options.push, self.options.live
        self.batch_size = self.options.batch_size
        #: Key of this replication's rows in the meta table, and the ``origin`` of its writes.
        self.key = checkpoints.key
        #: Every error of either direction (they are retried, never raised at you).
        self.errors: EventStream[P2PDBError] = EventStream()
        context = ReplicationContext(
            collection,
            handler,
            self.options,
            checkpoints,
            Arrivals(),
            origin=self.key,
            report=self._report,
            notify=self._changed,
            filter=DocumentFilter(self.options.selector, collection.schema),
        )
        self._checkpoints = checkpoints
        self._pulled = context.pulled
        self._walk_timer: asyncio.TimerHandle | None = None  # see _on_local_batch
        self._down = Downstream(context)
        self._up = Upstream(context)
        #: Stored states written from the master.
        self.received: EventStream[Doc] = self._down.received
        #: Wire documents the master accepted.
        self.sent: EventStream[Doc] = self._up.sent
        #: Conflicts the collection's conflict handler resolved.
        self.conflicts: EventStream[ResolvedConflict] = self._up.conflicts
        self._active: BehaviorSubject[bool] = BehaviorSubject(False)
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[DisposableBase] = []
        self._state_changed = asyncio.Event()
        self._canceled = False
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._unregister: Callable[[], None] | None = None  # from the database's closers
        self._paused = True
        # a master's RESYNC held until our pending pushes went out (see _on_stream)
        self._resync_held = False

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
        self.start_nowait()

    def start_nowait(self) -> None:
        """:meth:`start` for synchronous code running in the event loop (what
        ``replicate()`` calls unless ``autostart=False``). Starting twice does nothing;
        after :meth:`cancel` it raises ``REPLICATION_CANCELED``."""
        if self._canceled:
            raise ReplicationError(
                "This replication was canceled; call replicate() again with the same "
                "replication_id to resume from its checkpoints.",
                code="REPLICATION_CANCELED",
            )
        if not self._paused:
            return
        self.collection.database.check_open()
        if self._unregister is None:  # closing the database cancels the replication
            self._unregister = self.collection.database.close_with_collection(
                self.collection.name, self.cancel
            )
        self._paused = False
        # one replication of an id applies what it pulls at a time: the one started last
        older = _LATEST.get((id(self.collection), self.replication_id))
        if older is not None and older is not self:
            older._down.context.arrivals.superseded = True
        _LATEST[(id(self.collection), self.replication_id)] = self
        self._down.context.arrivals.superseded = False
        self._down.restart()
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
            self._tasks.append(loop.create_task(self._run(self._down)))
        if self.push:
            self._tasks.append(loop.create_task(self._run(self._up)))

    async def pause(self) -> None:
        """Stop pulling and pushing until :meth:`start`; nothing is lost meanwhile."""
        self._paused = True
        if self._walk_timer is not None:
            self._walk_timer.cancel()
            self._walk_timer = None
        for subscription in self._subscriptions:
            subscription.dispose()
        self._subscriptions.clear()
        tasks, self._tasks = self._tasks, []
        try:
            # a cancellation of our caller meanwhile is raised once they ended (p2pdb.tasks)
            await cancel_and_wait(tasks)
        finally:
            self._down.busy = self._up.busy = False
            self._hold_resync(False)  # start() pulls everything anyway
            self._changed()

    async def re_sync(self) -> None:
        """Pull everything after the stored checkpoint again (as after a reconnect)."""
        self._down.enqueue(RESYNC)

    async def cancel(self) -> None:
        """Stop for good; the checkpoints stay, so a new ``replicate()`` resumes."""
        if self._canceled:
            return
        self._canceled = True  # first: pause() below must not be undone by a restart
        if self._unregister is not None:
            self._unregister()
        try:
            await self.pause()
        finally:  # final even if our caller is cancelled meanwhile
            await self._close()

    async def _close(self) -> None:
        """The end of :meth:`cancel`: close the transport, complete the streams."""
        for close in self._closers:
            await close()
        self._changed()
        for stream in (self.errors, self.received, self.sent, self.conflicts):
            stream.on_completed()
        self._active.on_next(False)
        self._active.on_completed()

    def close_on_cancel(self, close: Callable[[], Awaitable[None]]) -> None:
        """Have :meth:`cancel` await ``close()`` once both directions stopped: a transport
        that opened a connection for this replication closes it with the replication."""
        self._closers.append(close)

    async def wait_for_initial_replication(self) -> None:
        """Return once both directions finished their first full pass."""
        await self._wait_until(lambda: self._down.first_done and self._up.first_done)

    async def wait_for_in_sync(self) -> None:
        """Return when nothing is left to pull or push right now (never while failing), and
        the push walked past what was pulled (its up-checkpoint is what cleanup reads)."""
        await self._wait_until(self._in_sync_and_walked)

    def _in_sync_and_walked(self) -> bool:
        if not self.is_in_sync():
            return False
        if self._walk_timer is not None:  # in sync but for the pulled rows: walk them now
            self._walk_timer.cancel()
            self._walk_past_pulled()
            return False
        return True

    async def wait_for_idle(self) -> None:
        """Return when neither direction is pulling or pushing right now."""
        await self._wait_until(lambda: not (self._down.busy or self._up.busy))

    async def __aenter__(self) -> ReplicationState:
        await self.start()  # a replication made with autostart=False starts here
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()

    @property
    def down_checkpoint(self) -> Any:
        """The pull direction's stored checkpoint (in the master's format; ``None`` before
        the first pull stored one): the fork holds everything the master had up to it."""
        return self._checkpoints.down()

    def is_pushed(self) -> bool:
        """True when the first pull is done and every local write was pushed and
        acknowledged (the pull direction may still be busy or failing)."""
        return self._down.first_done and self._up.settled()

    def is_in_sync(self) -> bool:
        """True when nothing is left to pull or push right now (see wait_for_in_sync)."""
        return (
            not self._paused
            and not self._resync_held
            and self._down.settled()
            and self._up.settled()
        )

    # -- bookkeeping -----------------------------------------------------------------------

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while self._canceled or not condition():
            if self._canceled:
                raise ReplicationError(
                    "The replication was canceled before it got there.",
                    code="REPLICATION_CANCELED",
                )
            self._state_changed.clear()
            await self._state_changed.wait()

    def _changed(self) -> None:
        if self._resync_held and (self._paused or self._up.settled() or self._up.failing):
            self._hold_resync(False)
            self._down.enqueue(RESYNC)
        self._state_changed.set()
        active = self._down.busy or self._up.busy
        if self._active.value != active and not self._canceled:
            self._active.on_next(active)

    def _on_stream(self, item: ChangesBatch | Resync) -> None:
        if item == RESYNC and self.push and not (self._up.settled() or self._up.failing):
            # A master asks for a RESYNC to learn what we hold (its next changesSince
            # request carries our checkpoint, see the WebRTC pool's wait_for_in_sync):
            # answering it only after our pending pushes went out tells it that we pushed
            # what we had, too. No other pull request goes out meanwhile: the master may
            # take the next one for that answer. Stream events may be missing before it
            # (a reconnect): none is applied until that pull, which covers them.
            self._down.gap()
            self._hold_resync(True)
        else:
            self._down.enqueue(item)
        self._changed()

    def _hold_resync(self, hold: bool) -> None:
        self._resync_held = hold
        self._down.hold_pulls(hold)

    def _on_stream_error(self, error: Exception) -> None:
        """The master's stream broke: report, then listen again and resync."""
        self._report("down", error)
        if self._paused:
            return
        self._subscriptions.append(
            self.handler.stream().subscribe(on_next=self._on_stream, on_error=self._on_stream_error)
        )
        self._down.enqueue(RESYNC)

    def _on_local_batch(self, events: list[ChangeEvent]) -> None:
        holds, key = self._pulled.holds, self.key
        if all(e.origin == key and holds(e.id, e.document["_rev"]) for e in events):
            # a commit of the pull's own (see .pulled) has nothing to push; the push walks
            # past its rows a little later, once for many such commits (the up-checkpoint
            # it stores is what tombstone cleanup waits for)
            if self._walk_timer is None:
                loop = asyncio.get_running_loop()
                self._walk_timer = loop.call_later(PULLED_WALK_DELAY, self._walk_past_pulled)
        else:
            self._up.local_change()
        self._changed()

    def _walk_past_pulled(self) -> None:
        self._walk_timer = None
        if not self._paused:
            self._up.local_change()
            self._changed()

    def _report(self, direction: Direction, error: BaseException) -> None:
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

    async def _run(self, direction: DirectionTask) -> None:
        """Run one direction; on failure report, back off, and start it over."""
        while True:
            try:
                await direction.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # we were cancelled, and what we awaited ended otherwise meanwhile (a
                    # task cancelled with us that failed first): stop, never retry
                    raise asyncio.CancelledError from exc
                direction.failing = True
                direction.failed()
                direction.set_busy(False)
                self._report(direction.name, exc)
                await asyncio.sleep(direction.backoff.next_delay())
                direction.retry()


def replicate(
    collection: ForkCollection,
    handler: ReplicationHandler,
    replication_id: str,
    options: ReplicationOptions | None = None,
    *,
    autostart: bool = True,
    **changes: Unpack[ReplicationOptionsChanges],
) -> ReplicationState:
    """Replicate ``collection`` (the fork) with the master behind ``handler``.

    Options come as a :class:`ReplicationOptions`, as keywords (``pull``, ``push``, ``live``,
    ``batch_size``, ``retry_delay``, ``max_retry_delay``, ``selector``, ``pull_modifier``,
    ``push_modifier``), or both (keywords win). The same
    ``replication_id`` resumes from the stored checkpoints. ``live=False`` stops after one
    full pass each way. Failures appear on ``state.errors`` and are retried with capped
    exponential backoff (``retry_delay`` doubling up to ``max_retry_delay``, with jitter).
    With ``autostart`` (the default) the state is started at once, so call this inside a
    running event loop; ``autostart=False`` returns it for you to ``await state.start()``.
    Use ``async with replicate(...) as state:`` to cancel on exit.
    """
    state = ReplicationState(collection, handler, replication_id, options, **changes)
    if autostart:
        state.start_nowait()
    return state
