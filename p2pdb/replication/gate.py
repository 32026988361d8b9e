"""Admitting one peer's requests within its :class:`~p2pdb.replication.limits.PeerLimits`.

A transport hands every request that costs work (``masterChangesSince``, ``masterWrite``)
to :meth:`RequestGate.push` instead of serving it at once. The gate serves at most
``max_requests_in_flight`` at a time, and starts one only while the peer's outbox holds
less than ``max_outbox_bytes`` and the shared memory budget has room (a peer with an
empty outbox may always start one, so a busy neighbour cannot starve it). More than
``max_queued_requests`` requests waiting, or waiting on an outbox from which nothing was
sent for ``drain_timeout`` seconds (the peer does not read), make the gate fail with the
transport's ``over_limit`` :class:`~p2pdb.errors.PeerError`: the transport drops the peer.

``masterWrite`` requests are counted apart, against ``max_queued_writes`` and
``max_queued_bytes`` (their params as JSON): an RxDB fork sends every push batch of one
local write at once (``persistToMaster`` splits it into ``push.batchSize`` rows and awaits
them all), so a bulk insert of 10,000 documents on it is 500 requests in one burst, which
an honest master must take. A write costs what it carries (the peer sent it already); a
request for data may ask for far more than it carries, so those stay few.

Bulk writes (more than :data:`~p2pdb.storage.SMALL_WRITE_ROWS` rows) are served at most
``max_bulk_writes_in_flight`` at a time. Their transactions take turns on the one SQLite
writer anyway; served all at once, they would only stand ahead of a live change there, and
lengthen every turn of the event loop that has to read its packet. A small write (a live
change) waits in a queue of its own and goes ahead of them; every other request keeps its
place behind the writes that came before it: a fork answers a master's ``RESYNC`` with a
pull sent after its pushes, and the master takes that pull as a sign that they were served
(``plugins/replication_webrtc/acks.py``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from ..eager import start_eagerly
from ..errors import PeerError
from ..storage import SMALL_WRITE_ROWS
from ..tasks import cancel_and_wait
from .limits import ErrorRate, PeerLimits, json_size
from .rpc import Request, RpcChannel

__all__ = ["RequestGate", "UnknownMethods", "is_bulk_write"]

#: The one request whose cost is what it carries: queued by count and bytes of its own.
WRITE_METHOD = "masterWrite"


def is_bulk_write(request: Request) -> bool:
    """A ``masterWrite`` of more than :data:`~p2pdb.storage.SMALL_WRITE_ROWS` rows (its
    params are checked later, when served: anything malformed counts as small)."""
    if request.method != WRITE_METHOD:
        return False
    params = request.params
    return bool(params) and isinstance(params[0], list) and len(params[0]) > SMALL_WRITE_ROWS


class RequestGate:
    """Serves one peer's requests with ``serve(request)``, within ``limits``.

    ``on_over_limit(error)`` is called once if the peer's outbox does not drain in time
    (:meth:`push` raises the error itself when the queue is full). The gate owns the
    tasks serving requests: :meth:`close` cancels and awaits them. Use :meth:`start` (or
    ``async with``) and :meth:`close`.
    """

    def __init__(
        self,
        channel: RpcChannel,
        limits: PeerLimits,
        serve: Callable[[Request], Awaitable[object]],
        on_over_limit: Callable[[PeerError], None],
    ) -> None:
        self.channel = channel
        self.limits = limits
        self.budget = limits.shared_budget()
        self._serve = serve
        self._on_over_limit = on_over_limit
        # waiting, with a write's params' size and whether it is a bulk one: small writes go
        # ahead, the others keep their order
        self._waiting: deque[tuple[Request, int, bool]] = deque()
        self._small_writes: deque[tuple[Request, int, bool]] = deque()
        self._bulk_in_flight = 0
        self._queued_writes = 0  # masterWrite requests waiting, and their params' JSON bytes
        self._queued_bytes = 0
        self._tasks: set[asyncio.Future[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._watching = False
        self._room = asyncio.Event()  # set while no request waits (for wait_for_queue)
        self._room.set()
        self._started = False
        #: The error the gate failed with (then it takes no more requests).
        self.failed: PeerError | None = None

    @property
    def in_flight(self) -> int:
        """Requests being served now."""
        return len(self._tasks)

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot or for the outbox to drain."""
        return len(self._waiting) + len(self._small_writes)

    async def start(self) -> None:
        """Start serving (requests pushed before wait until then)."""
        if not self._started:
            self._started = True
            self.channel.sent_listeners.add(self._sent)
            self._pump()

    async def __aenter__(self) -> RequestGate:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def push(self, request: Request) -> None:
        """Serve ``request`` when the limits allow. Raises the ``over_limit`` PeerError if
        too many wait (see the module docstring), or if the gate failed before."""
        if self.failed is not None:
            raise self.failed
        bulk = is_bulk_write(request)
        small_write = request.method == WRITE_METHOD and not bulk
        queue = self._small_writes if small_write else self._waiting
        if self._started and not queue and self._can_start(bulk):
            # served at once: nothing held, nothing to count. A small write (and a bulk one
            # while nothing else is in flight), with the outbox empty, runs its first part
            # (the write on the loop, the answer sent) in this turn: a live push's way. A
            # pull may ask for far more than it carries: always a task, so a flood of them
            # fills the outbox and waits.
            now = request.method == WRITE_METHOD and not (bulk and self._tasks)
            self._start(request, bulk, now=now and self.channel.queued_bytes == 0)
            return
        limits = self.limits
        size = 0
        if request.method != WRITE_METHOD:
            if self.waiting - self._queued_writes >= limits.max_queued_requests:
                raise self._fail(
                    f"{self.channel.label} has more than {limits.max_queued_requests} "
                    "requests waiting; disconnected.",
                    "max_queued_requests",
                )
        elif self._queued_writes >= limits.max_queued_writes:
            raise self._fail(
                f"{self.channel.label} has more than {limits.max_queued_writes} writes "
                "waiting; disconnected.",
                "max_queued_writes",
            )
        else:
            size = json_size(request.params)
            if self._queued_bytes + size > limits.max_queued_bytes:
                raise self._fail(
                    f"{self.channel.label} has more than {limits.max_queued_bytes} bytes "
                    "of writes waiting; disconnected.",
                    "max_queued_bytes",
                )
            self._queued_writes += 1
            self._queued_bytes += size
        queue.append((request, size, bulk))
        self._room.clear()
        self._pump()

    async def wait_for_queue(self) -> None:
        """Wait until no request waits (a transport that can stop reading slows the peer
        down this way); raises the gate's error if it failed meanwhile."""
        await self._room.wait()
        if self.failed is not None:
            raise self.failed

    def _has_room(self) -> bool:
        queued = self.channel.queued_bytes
        if queued >= self.limits.max_outbox_bytes:
            return False
        return queued == 0 or self.budget.has_room()

    def _can_start(self, bulk: bool) -> bool:
        """A slot (of its kind) is free and the outbox has room."""
        if bulk and self._bulk_in_flight >= self.limits.max_bulk_writes_in_flight:
            return False
        return len(self._tasks) < self.limits.max_requests_in_flight and self._has_room()

    def _start(self, request: Request, bulk: bool, *, now: bool = False) -> None:
        self._bulk_in_flight += bulk
        if now:
            started = start_eagerly(self._run(request, bulk))
            if not started.done():  # waiting (a write on the thread): in flight
                self._tasks.add(started)
            return
        task = asyncio.get_running_loop().create_task(self._run(request, bulk))
        self._tasks.add(task)

    def _sent(self) -> None:
        """A message went out: progress, so the drain timer starts again."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pump()

    def _pump(self) -> None:
        """Start what the limits allow; arm or disarm the drain timer."""
        if not self._started or self.failed is not None:
            return
        while True:
            if self._small_writes and self._can_start(False):
                request, size, bulk = self._small_writes.popleft()
            elif self._waiting and self._can_start(self._waiting[0][2]):
                request, size, bulk = self._waiting.popleft()
            else:
                break
            if request.method == WRITE_METHOD:
                self._queued_writes -= 1
                self._queued_bytes -= size
            self._start(request, bulk)
        if not self.waiting:
            self._room.set()
        # still waiting with a slot free: held by the outbox or the budget
        head_may_start = bool(self._waiting) and (
            not self._waiting[0][2]
            or self._bulk_in_flight < self.limits.max_bulk_writes_in_flight
        )
        blocked = (bool(self._small_writes) or head_may_start) and len(
            self._tasks
        ) < self.limits.max_requests_in_flight
        if blocked and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.limits.drain_timeout, self._drain_expired
            )
            self._watch(True)
        elif not blocked:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._watch(False)

    def _watch(self, on: bool) -> None:
        """Hear about the shared budget only while waiting on it (no reference is kept
        from the process-wide budget to an idle or closed gate)."""
        if on and not self._watching:
            self.budget.watch(self._pump)
        elif not on and self._watching:
            self.budget.unwatch(self._pump)
        self._watching = on

    async def _run(self, request: Request, bulk: bool) -> None:
        try:
            await self._serve(request)
        finally:
            self._bulk_in_flight -= bulk
            self._tasks.discard(asyncio.current_task())
            self._pump()

    def _drain_expired(self) -> None:
        self._timer = None
        self._watch(False)
        error = self._fail(
            f"{self.channel.label} read nothing for {self.limits.drain_timeout} s while its "
            f"requests waited ({self.channel.queued_bytes} bytes queued); "
            "disconnected.",
            "drain_timeout",
        )
        self._on_over_limit(error)

    def _fail(self, message: str, limit: str) -> PeerError:
        error = self.channel.error("over_limit", message, limit=limit)
        self.failed = error
        self._waiting.clear()
        self._small_writes.clear()
        self._queued_writes = self._queued_bytes = 0
        self._room.set()
        return error

    async def close(self) -> None:
        """Stop: nothing waiting is served, requests being served are cancelled."""
        if self.failed is None:
            self.failed = self.channel.error("peer_gone", f"{self.channel.label} is gone.")
        self._waiting.clear()
        self._small_writes.clear()
        self._queued_writes = self._queued_bytes = 0
        self._room.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._watch(False)
        self.channel.sent_listeners.discard(self._sent)
        await cancel_and_wait(self._tasks)


class UnknownMethods:
    """Refuses one peer's requests for methods nobody serves, within its error rate.

    Each gets a ``protocol_violation`` error answer (RxDB peers may probe, so one is no
    reason to drop a peer). The first ``logged_errors`` of a window are passed to
    ``report``; past ``max_errors`` within ``error_window`` seconds the ``over_limit``
    PeerError goes to ``drop``: a flood of them costs a few log lines, not thousands.
    """

    def __init__(
        self,
        channel: RpcChannel,
        limits: PeerLimits,
        report: Callable[[PeerError], None],
        drop: Callable[[PeerError], None],
    ) -> None:
        self.channel = channel
        self.limits = limits
        self.rate = ErrorRate(limits)
        self._report = report
        self._drop = drop

    def refuse(self, request: Request, channel: RpcChannel | None = None) -> None:
        """Answer ``request`` with an error (on ``channel``, default the one given at
        construction: a transport may carry several channels for one peer); report it, or
        drop the peer."""
        channel = channel if channel is not None else self.channel
        unknown = f"Unknown method {request.method[:100]!r}."
        channel.answer_error(request.id, channel.error("protocol_violation", unknown))
        verdict = self.rate.note(asyncio.get_running_loop().time())
        if verdict == "drop":
            self._drop(
                channel.error(
                    "over_limit",
                    f"{channel.label} sent more than {self.limits.max_errors} bad requests "
                    f"within {self.limits.error_window} s; disconnected.",
                    limit="max_errors",
                    not_reported=self.rate.take_suppressed(),
                )
            )
        elif verdict == "report":
            skipped = self.rate.take_suppressed()
            more = f" ({skipped} more not reported)" if skipped else ""
            self._report(
                channel.error(
                    "protocol_violation",
                    f"{channel.label} called unknown method {request.method[:100]!r}{more}.",
                )
            )
