"""Requests, answers and events with one remote side, over any transport.

The messages are RxDB 17's (its WebRTC replication uses them as they are; other transports
map their own shapes to these, see :mod:`p2pdb.replication.wire`):

- request ``{id, method, params}``; answer ``{id, result}`` or ``{id, result: null, error}``;
- unsolicited stream events ``{id: "masterChangeStream$", result}``.

Everything sent goes through one FIFO queue, so the other side receives stream events and
answers in the order they were produced (the replication's stale-state rule relies on it)
and one large message never interleaves with another. Two kinds of messages go beside it:
urgent ones that carry no replication data (heartbeats, :meth:`RpcChannel.post_now`), and
live stream events of a few documents that the rules of :mod:`p2pdb.replication.lanes`
let overtake bulk ones (:meth:`RpcChannel.post_event` with ``ids``).

Every request has a timeout; pending requests fail at once when the other side goes away
(the sink raises :class:`PeerError`) or the channel is closed. The queue's size in bytes
(:attr:`RpcChannel.queued_bytes`) is charged to a
:class:`~p2pdb.replication.limits.MemoryBudget`, which bounds what the peers of a process
can make it hold (see :mod:`p2pdb.replication.limits`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..eager import start_eagerly
from ..errors import P2PDBError, PeerError
from ..tasks import cancel_and_wait
from ..tokens import random_token
from .lanes import STREAM_ID, URGENT_SEND, FlushGauge, LiveLane, Outgoing, batch_ids
from .limits import PROCESS_BUDGET, MemoryBudget, json_size

__all__ = [
    "STREAM_ID",
    "WIRE_CODES",
    "MessageSink",
    "Request",
    "RpcChannel",
    "StreamEvent",
    "WireErrorCodes",
]

log = logging.getLogger("p2pdb.replication.rpc")

#: Urgent sends under way at once; past it, urgent messages are queued like any other
#: (a flood of heartbeats must not become a flood of tasks).
MAX_URGENT = 16


class MessageSink(Protocol):
    """Where a channel's outgoing messages go: the transport's side of the seam."""

    async def send(self, message: object) -> None:
        """Deliver one JSON-serializable message to the other side, in call order.

        Raise :class:`~p2pdb.errors.PeerError` when the other side is gone.
        """
        ...


@dataclass(frozen=True, slots=True)
class WireErrorCodes:
    """The error codes one transport's channel raises (each transport has its own, so a
    program can tell a WebRTC timeout from a WebSocket one). Construct it with positional
    code strings, so the documentation check finds them."""

    request_timeout: str  #: no answer within the request timeout
    peer_gone: str  #: the other side disconnected (or the channel closed)
    remote_error: str  #: the other side answered with an error
    bad_answer: str  #: an answer of the wrong shape
    protocol_violation: str  #: a message that breaks the protocol
    invalid_data: str  #: a request whose documents or rows fail validation
    #: the other side went over one of its :class:`~p2pdb.replication.limits.PeerLimits`
    over_limit: str = "WIRE_PEER_OVER_LIMIT"


#: Codes of transport-less channels (the in-memory pipe of :mod:`p2pdb.replication.testing`).
WIRE_CODES = WireErrorCodes(
    "WIRE_REQUEST_TIMEOUT",
    "WIRE_PEER_GONE",
    "WIRE_REMOTE_ERROR",
    "WIRE_BAD_ANSWER",
    "WIRE_PROTOCOL_VIOLATION",
    "WIRE_INVALID_DATA",
    "WIRE_PEER_OVER_LIMIT",
)


@dataclass(frozen=True, slots=True)
class Request:
    """A request from the other side (answer it with :meth:`RpcChannel.answer`)."""

    id: str
    method: str
    params: list[Any]


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """An unsolicited stream event from the other side; ``result`` is unchecked."""

    result: object


class RpcChannel:
    """Requests, answers and events with one remote side.

    ``sink`` delivers outgoing messages; the transport hands every incoming message to
    :meth:`receive`. ``label`` names the other side in error messages ("Peer abc", a URL)
    and ``context`` goes into the parameters of every error (``{"peer_id": ...}``);
    ``token`` starts our request ids; ``codes`` are the transport's error codes;
    ``on_idle`` is called each time the outgoing queue drains; ``budget`` is charged
    with the bytes queued (default :data:`~p2pdb.replication.limits.PROCESS_BUDGET`);
    ``primary_key`` names the documents' id field of the stream batches posted: with it,
    a small one may go ahead of bulk ones (:meth:`post_event`); ``gauge``: the sink's, if
    its transport lets urgent frames overtake frames it holds (:class:`.lanes.FlushGauge`).
    Use ``async with`` or :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        sink: MessageSink,
        *,
        label: str,
        token: str,
        context: Mapping[str, Any] | None = None,
        codes: WireErrorCodes = WIRE_CODES,
        request_timeout: float = 20.0,
        on_idle: Callable[[], None] | None = None,
        budget: MemoryBudget | None = None,
        primary_key: str | None = None,
        gauge: FlushGauge | None = None,
    ) -> None:
        self.sink = sink
        self.label = label
        self.context = dict(context or {})
        self.codes = codes
        self.request_timeout = request_timeout
        self._prefix = f"{token}|{random_token(10)}|"
        self._counter = itertools.count()
        self._issued = 0  # request ids issued so far: "<prefix><n>" with n < this
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._outbox: deque[Outgoing] = deque()
        self._mail = asyncio.Event()  # set while the outbox holds something
        self._sending: Outgoing | None = None  # being sent in order
        self._head: asyncio.Future[None] | None = None  # sent at once, may still be sending
        self._failed: PeerError | None = None  # the sink failed: nothing more goes in order
        #: Which stream events may go ahead of the queue (see :mod:`.lanes`).
        self.lane = LiveLane(gauge)
        self.budget = budget if budget is not None else PROCESS_BUDGET
        #: Bytes (JSON) of the messages queued and not yet sent.
        self.queued_bytes = 0
        #: Called after each queued message was sent (request gates wait on it).
        self.sent_listeners: set[Callable[[], None]] = set()
        self._urgent: set[asyncio.Task[None]] = set()
        self._live: set[asyncio.Task[None]] = set()  # live stream events being sent
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        self.last_heard = 0.0  # loop time of the last incoming message (set by start)
        self.idle = asyncio.Event()  # set while nothing waits to be sent
        self.idle.set()
        self._on_idle = on_idle
        self.primary_key = primary_key

    async def start(self) -> None:
        """Start sending (messages posted before are sent first)."""
        if self._sender is None and not self._closed:
            self.last_heard = asyncio.get_running_loop().time()
            self._sender = asyncio.get_running_loop().create_task(self._send_in_order())

    async def __aenter__(self) -> RpcChannel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def error(self, kind: str, message: str, **parameters: Any) -> PeerError:
        """A :class:`PeerError` with this channel's code for ``kind`` (a field name of
        :class:`WireErrorCodes`) and the channel's ``context`` in its parameters."""
        parameters = {**self.context, **parameters}
        return PeerError(message, code=getattr(self.codes, kind), **parameters)

    # -- sending ---------------------------------------------------------------------------

    def post(self, message: object) -> None:
        """Queue a message (sent in order, after everything queued before). With nothing
        queued before it, it is sent at once: its frames go in this turn, not the sender
        task's (requests and answers; a stream event posted while its commit's listeners
        run waits for the sender task, so they and the writer are not held up)."""
        self._enqueue(Outgoing(message, json_size(message)), at_once=True)

    def _enqueue(self, entry: Outgoing, *, at_once: bool = False) -> None:
        if not self._closed:
            self.idle.clear()
            self.queued_bytes += entry.size
            self.budget.charge(entry.size)
            if at_once and self._in_order_idle():
                self._head = start_eagerly(self._send_one(entry, notify_soon=True))
                return
            self._outbox.append(entry)
            self._mail.set()

    def _in_order_idle(self) -> bool:
        """True when nothing posted before is still to be sent (or being sent)."""
        head_done = self._head is None or self._head.done()
        idle = self._sending is None and not self._outbox and not self._live and head_done
        return idle and self._sender is not None and self._failed is None

    def post_now(self, message: object) -> None:
        """Send a small message at once, ahead of the queue (its frames may interleave
        with those of a large message being sent). Only for messages that carry no
        replication data (heartbeats), whose order does not matter: behind a large message
        they would wait for all of it and look like a dead peer. Before :meth:`start` it is
        queued like any message."""
        if self._sender is None or len(self._urgent) >= MAX_URGENT:
            self.post(message)
        elif not self._closed:
            _track(asyncio.get_running_loop().create_task(self._send_now(message)), self._urgent)

    def post_event(self, result: object, *, ids: Collection[str] | None = None) -> None:
        """Queue a stream event ``{id: STREAM_ID, result}``.

        ``ids``: the ids of a batch's documents (default: read with ``primary_key``). With
        them, a small batch may go ahead of bulk stream events (its checkpoint lowered to
        one already sent, see :mod:`.lanes`), and a later live event never overtakes this
        one with one of them.
        """
        message = {"id": STREAM_ID, "result": result}
        size = json_size(message)
        if ids is None and self.primary_key is not None:
            ids = batch_ids(result, self.primary_key)
        started = self._sender is not None and not self._closed
        if ids is not None and started and len(self._urgent) < MAX_URGENT:
            unsent = self._outbox if self._sending is None else [self._sending, *self._outbox]
            live = self.lane.live_message(result, ids, size, unsent)
            if live is not None:
                self.lane.started(ids)
                task = asyncio.get_running_loop().create_task(self._send_now(live, ids))
                _track(task, self._urgent, self._live)
                return
        self._enqueue(Outgoing(message, size, None if ids is None else frozenset(ids)))

    async def _send_now(self, message: object, ids: Collection[str] = ()) -> None:
        URGENT_SEND.set(True)  # this task's own context: the transport's frames go first
        try:
            await self.sink.send(message)
        except PeerError as exc:
            self.fail_pending(exc)
        finally:
            self.lane.finished(ids)

    async def _send_in_order(self) -> None:
        while True:
            while not self._outbox:
                self._mail.clear()
                await self._mail.wait()
            # one sent at once that had to wait (a full channel) goes first
            if self._head is not None and not self._head.done():
                await asyncio.wait([self._head])
            while self._live:  # what was posted after a live event never reaches the sink first
                await asyncio.wait(list(self._live))
            if self._failed is not None:
                return
            await self._send_one(self._outbox.popleft())

    async def _send_one(self, entry: Outgoing, *, notify_soon: bool = False) -> None:
        """Send the next message in order (``notify_soon``: sent within ``post``, whose
        caller is not called back in the middle of posting)."""
        self._sending = entry
        try:
            await self.sink.send(entry.message)
        except PeerError as exc:
            self._failed = exc  # nothing more is sent in order: the peer is gone
            self.fail_pending(exc)
            return
        finally:
            self._sending = None
            self._uncharge(entry.size)
        self.lane.sent_in_order(entry)
        drained = not self._outbox
        if drained:
            self.idle.set()
        if notify_soon:
            asyncio.get_running_loop().call_soon(self._notify, drained)
        else:
            self._notify(drained)

    def _notify(self, drained: bool) -> None:
        for listener in list(self.sent_listeners):
            listener()
        if drained and self._on_idle is not None:
            self._on_idle()

    def _uncharge(self, size: int) -> None:
        self.queued_bytes -= size
        self.budget.release(size)

    async def request(
        self, method: str, params: list[Any], within: float | None = None, *, urgent: bool = False
    ) -> Any:
        """Send a request and wait for its answer (raises PeerError on error or timeout).

        ``urgent``: send it ahead of the queue (see :meth:`post_now`)."""
        if self._closed:
            raise self.error("peer_gone", f"{self.label} is disconnected.")
        request_id = f"{self._prefix}{next(self._counter)}"
        self._issued += 1
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        message = {"id": request_id, "method": method, "params": params}
        if urgent:
            self.post_now(message)
        else:
            self.post(message)
        limit = within or self.request_timeout
        try:
            async with asyncio.timeout(limit):
                return await answer
        except TimeoutError:
            raise self.error(
                "request_timeout",
                f"{self.label} did not answer {method} within {limit} s.",
                method=method,
            ) from None
        finally:
            self._pending.pop(request_id, None)

    def answer(self, request_id: str, result: Any, *, urgent: bool = False) -> None:
        """Queue the answer to a request (``urgent``: see :meth:`post_now`)."""
        message = {"id": request_id, "result": result}
        if urgent:
            self.post_now(message)
        else:
            self.post(message)

    def answer_error(self, request_id: str, error: BaseException) -> None:
        """Queue an error answer, in RxDB's shape."""
        body = (
            error.to_json()
            if isinstance(error, P2PDBError)
            else {"name": type(error).__name__, "message": str(error)}
        )
        self.post({"id": request_id, "result": None, "error": body})

    # -- receiving -------------------------------------------------------------------------

    def receive(self, message: object) -> Request | StreamEvent | None:
        """Take one incoming message: an answer resolves its request (returns None); a
        request or a stream event is returned for the caller to handle.

        Raises the ``protocol_violation`` :class:`PeerError` for a message no honest peer
        sends (not an object, no id, a malformed request, an answer to nothing we asked).
        """
        self.heard()
        if not isinstance(message, dict):
            raise self.error("protocol_violation", "A message must be a JSON object.")
        method = message.get("method")
        if isinstance(method, str):
            request_id, params = message.get("id"), message.get("params")
            if not isinstance(request_id, str) or not isinstance(params, list):
                raise self.error(
                    "protocol_violation", "A request needs a string id and a params list."
                )
            return Request(request_id, method, params)
        if message.get("id") == STREAM_ID:
            return StreamEvent(message.get("result"))
        if "id" not in message:
            raise self.error("protocol_violation", "A message without id or method.")
        if not self._take_answer(message):
            raise self.error("protocol_violation", "An answer to a request that was never made.")
        return None

    def _take_answer(self, message: dict[str, Any]) -> bool:
        """Resolve the pending request an answer belongs to. A late answer (its request
        timed out) is dropped; False only for an answer to a request never sent."""
        request_id = message.get("id")
        future = self._pending.get(request_id) if isinstance(request_id, str) else None
        if future is None or future.done():
            if not self._was_issued(request_id):
                return False
            log.debug("dropping an answer nobody waits for from %s", self.label)
            return True
        error = message.get("error")
        if error is not None:
            text = error.get("message") if isinstance(error, dict) else error
            future.set_exception(
                self.error(
                    "remote_error",
                    f"{self.label} answered with an error: {text}",
                    remote_error=error,
                )
            )
        else:
            future.set_result(message.get("result"))
        return True

    def _was_issued(self, request_id: object) -> bool:
        if not isinstance(request_id, str) or not request_id.startswith(self._prefix):
            return False
        number = request_id[len(self._prefix) :]
        return number.isdigit() and len(number) < 20 and int(number) < self._issued

    def heard(self) -> None:
        """Note that a message arrived (the other side is alive)."""
        self.last_heard = asyncio.get_running_loop().time()

    def fail_pending(self, error: PeerError) -> None:
        """Fail every pending request with ``error``."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def close(self) -> None:
        """Stop sending and fail the pending requests."""
        self._closed = True
        self.fail_pending(self.error("peer_gone", f"{self.label} disconnected."))
        try:
            await cancel_and_wait(
                t for t in (self._sender, self._head, *self._urgent) if t is not None
            )
        finally:  # our caller cancelled meanwhile or not
            while self._outbox:  # never sent: give the budget back
                self._uncharge(self._outbox.popleft().size)
            self.sent_listeners.clear()
            self.idle.set()


def _track(task: asyncio.Task[None], *sets: set[asyncio.Task[None]]) -> None:
    """Keep ``task`` in ``sets`` until it ends."""
    for tasks in sets:
        tasks.add(task)
        task.add_done_callback(tasks.discard)
